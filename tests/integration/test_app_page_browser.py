"""The app's page in a real headless Chromium (Debian's, driven through its ChromeDriver): the merchant opens it,
pastes a Brevo key that Brevo refuses and is told so, then a good one, and the shop is connected."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from connector.shops import credentials
from tests.integration.harness import BREVO_KEY, Connector
from tests.integration.test_app_home import NEW, _shop, session_token

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     # No network here: Shopify's App Bridge script cannot load, and must not hold the page.
                     "--host-resolver-rules=MAP cdn.shopify.com ~NOTFOUND"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _submit_key(browser: webdriver.Chrome, key: str) -> str:
    form = browser.find_element(By.CSS_SELECTOR, "form[data-action='/app/brevo']")
    field = form.find_element(By.NAME, "brevo_api_key")
    field.clear()
    field.send_keys(key)
    output = form.find_element(By.TAG_NAME, "output")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 15).until(lambda _: output.text not in ("", "…"))
    return str(output.text)


def test_a_merchant_connects_brevo_from_the_app_page_in_a_browser(connector: Connector,
                                                                  browser: webdriver.Chrome) -> None:
    query = urlencode({"shop": NEW, "host": "YWRtaW4uc2hvcGlmeS5jb20vc3RvcmUvbmV3", "embedded": "1",
                       "id_token": session_token()})
    browser.get(f"{connector.web.url}/app?{query}")
    WebDriverWait(browser, 15).until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
    assert NEW in browser.find_element(By.TAG_NAME, "h1").text
    assert "Waiting for a Brevo API key" in browser.page_source

    refused = _submit_key(browser, "xkeysib-not-a-key")
    assert "Brevo refused this API key" in refused
    assert _shop(connector).brevo_api_key_enc is None

    accepted = _submit_key(browser, BREVO_KEY)
    assert "Brevo connected" in accepted
    assert credentials(_shop(connector), connector.settings).brevo_api_key == BREVO_KEY
