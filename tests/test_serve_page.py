"""The chat page of `minigpt serve` in headless Chromium: typed messages, streamed replies, the buttons,
and a screenshot. The replies at temperature 0 must be the API's own for the same conversation.

Skips when no Chromium is installed (Debian: apt-get install chromium).
"""

import json
import struct
import time
import zlib

import pytest

from cdp import Browser, find_chromium
from serving import CHINESE, ENGLISH, KEY, TIMEOUT, Server, chat, tiny_model

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary on PATH (apt-get install chromium)")
WIDTH, HEIGHT = 900, 700
MAX_TOKENS = 24

REPLIES = "[...document.querySelectorAll('.assistant')]"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tiny_model(tmp_path_factory.mktemp("page")), "--parallel", "2", "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    b = Browser(CHROMIUM, WIDTH, HEIGHT, timeout=TIMEOUT)
    yield b
    b.close()


@pytest.fixture
def page(server, browser):
    """The chat page, loaded afresh, its model's name shown; greedy, short replies."""
    browser.goto(server.url + "/")
    browser.wait_for("document.getElementById('title').textContent.includes('tiny')")
    set_field(browser, "temperature", "0")
    set_field(browser, "max_tokens", str(MAX_TOKENS))
    return browser


def set_field(browser, id, value):
    browser.evaluate(f"document.getElementById({json.dumps(id)}).value = {json.dumps(value)}")


def send(browser, text):
    """Type `text` into the message box and press Enter."""
    browser.evaluate("document.getElementById('input').focus()")
    browser.type_text(text)
    browser.press("Enter", "Enter", 13)


def wait_reply(browser, n):
    """The text of the page's n-th reply (from 1) and how it ended, once it is complete."""
    browser.wait_for(f"{REPLIES}.filter(d => d.dataset.finish).length >= {n} && document.body.dataset.state === 'ready'")
    return browser.evaluate(f"[{REPLIES}[{n - 1}].textContent, {REPLIES}[{n - 1}].dataset.finish]")


def slots_free(server):
    deadline = time.monotonic() + 30   # a bound for a machine under heavy load, not a measure
    while server.health()["slots_busy"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return server.health()["slots_busy"] == 0


def png_facts(data):
    """(width, height, distinct byte values of the pixel rows) of a PNG; raises on a malformed one."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0], kind
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kind == b"IEND" and size is not None
    return (*size, len(set(zlib.decompress(idat))))


# ---

def test_a_conversation_streams_the_apis_replies(server, page, tmp_path):
    send(page, ENGLISH)   # no API key yet: refused, and the message comes back to be sent again
    page.wait_for("document.querySelector('.error') && document.body.dataset.state === 'ready'")
    assert "API key" in page.evaluate("document.querySelector('.error').textContent")
    assert page.evaluate(f"{REPLIES}.length") == 0
    assert page.evaluate("document.getElementById('input').value") == ENGLISH

    page.evaluate("document.getElementById('key').focus()")
    page.type_text(KEY)
    page.evaluate("document.getElementById('input').value = ''")
    send(page, ENGLISH)
    first, finish = wait_reply(page, 1)
    api = chat(server.client(), ENGLISH, temperature=0, max_tokens=MAX_TOKENS).choices[0].message.content
    assert first and first == api and finish == "length"

    send(page, CHINESE)   # the next turn carries the first one, as the page showed it
    second, finish = wait_reply(page, 2)
    convo = [{"role": "user", "content": ENGLISH}, {"role": "assistant", "content": first},
             {"role": "user", "content": CHINESE}]
    api = chat(server.client(), convo, temperature=0, max_tokens=MAX_TOKENS).choices[0].message.content
    assert second and second == api and finish == "length"
    shown = page.evaluate("document.getElementById('log').textContent")
    assert ENGLISH in shown and CHINESE in shown and "\ufffd" not in shown

    shot = tmp_path / "chat.png"
    shot.write_bytes(page.screenshot())
    width, height, values = png_facts(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    assert values > 16, "a blank page"   # text is drawn antialiased: many shades, where a blank page has one


def test_stop_and_new_chat(server, page):
    page.evaluate("document.getElementById('key').value = " + json.dumps(KEY))
    set_field(page, "max_tokens", "")   # no limit: the tiny model would write for minutes
    send(page, ENGLISH)
    page.wait_for(f"{REPLIES}[0].textContent.length > 0")
    assert page.evaluate("document.body.dataset.state") == "busy"
    assert page.evaluate("document.getElementById('send').textContent") == "Stop"
    page.click("#send")
    assert wait_reply(page, 1)[1] == "stopped" and slots_free(server)

    send(page, CHINESE)   # "New chat" mid-reply: the reply stops, and nothing of it leaks into the next chat
    page.wait_for(f"{REPLIES}[1].textContent.length > 0")
    page.click("#clear")
    page.wait_for("document.getElementById('log').children.length === 0 && document.body.dataset.state === 'ready'")
    assert slots_free(server)
    set_field(page, "max_tokens", str(MAX_TOKENS))
    send(page, CHINESE)
    reply, finish = wait_reply(page, 1)
    api = chat(server.client(), CHINESE, temperature=0, max_tokens=MAX_TOKENS).choices[0].message.content
    assert reply == api and finish == "length"
