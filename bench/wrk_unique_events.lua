-- wrk script: POST one fixed, signed Shopify webhook body with a unique X-Shopify-Event-Id per request.
--
-- Usage: wrk -s bench/wrk_unique_events.lua URL -- BODY_FILE HEADERS_FILE RUN_TAG
--   BODY_FILE     the exact body the signature was computed over
--   HEADERS_FILE  the fixed headers, one "Name: value" per line (topic, HMAC, shop domain, API version, ...);
--                 Host, Content-Length, X-Shopify-Event-Id and X-Shopify-Webhook-Id are added here
--   RUN_TAG       prefix that keeps event ids unique across runs against the same database
-- Event ids are RUN_TAG-THREAD-COUNTER. When the run ends, one line is printed for bench/intake.py:
--   bench-counts sent=S answered=A ok=K
-- (requests sent, responses read, responses with a 2xx status; summed over the threads). sent - answered is
-- what was still in flight when wrk stopped: the server may have stored those, but never acknowledged them.

local threads = {}
local next_thread_id = 1

function setup(thread)
   thread:set("thread_id", next_thread_id)
   next_thread_id = next_thread_id + 1
   table.insert(threads, thread)
end

-- Per-thread globals (read back in done() with thread:get).
sent, answered, ok = 0, 0, 0

local head, tail, prefix

local function read_file(path)
   local file = assert(io.open(path, "rb"))
   local data = file:read("*a")
   file:close()
   return data
end

function init(args)
   local body = read_file(args[1])
   local lines = {
      "POST " .. wrk.path .. " HTTP/1.1",
      "Host: " .. wrk.headers["Host"],
      "Content-Length: " .. #body,
   }
   for line in read_file(args[2]):gmatch("[^\r\n]+") do
      table.insert(lines, line)
   end
   table.insert(lines, "X-Shopify-Event-Id: ")
   head = table.concat(lines, "\r\n")
   tail = "\r\n\r\n" .. body
   prefix = args[3] .. "-" .. thread_id .. "-"
end

function request()
   sent = sent + 1
   local id = prefix .. sent
   return head .. id .. "\r\nX-Shopify-Webhook-Id: " .. id .. tail
end

function response(status, headers, body)
   answered = answered + 1
   if status >= 200 and status < 300 then
      ok = ok + 1
   end
end

function done(summary, latency, requests)
   local total_sent, total_answered, total_ok = 0, 0, 0
   for _, thread in ipairs(threads) do
      total_sent = total_sent + thread:get("sent")
      total_answered = total_answered + thread:get("answered")
      total_ok = total_ok + thread:get("ok")
   end
   -- wrk builds one request up front (first thread) to validate the script; it is never sent.
   total_sent = total_sent - 1
   io.write(string.format("bench-counts sent=%d answered=%d ok=%d\n", total_sent, total_answered, total_ok))
end
