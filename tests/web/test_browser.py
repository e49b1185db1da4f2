"""The voice page in a real headless Chromium with a fake microphone playing a WAV (slow)."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from audio.wavio import read_wav, write_wav

pytestmark = [pytest.mark.slow, pytest.mark.browser]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def browser(tmp_path, stack):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("chromium and chromium-driver are needed: run `scripts/bootstrap --test` as root")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # "France" used to come out as "friends": piper samples noise on every call (test speech is
    # now synthesised without it), and the browser's noise suppression ate the final /s/
    # (with the noise-free speech: 3 of 3 runs "friends" with it on, 4 of 4 "France" off).
    question = tmp_path / "question.wav"
    tts = stack.tts
    write_wav(question, tts.synthesize_all("What is the capital of France?", deterministic=True), tts.rate_hz)
    mic = tmp_path / "mic.wav"  # Chromium loops the file: speak once, then a long silence
    audio = np.concatenate([np.zeros(8000, np.float32), read_wav(question), np.zeros(16000 * 20, np.float32)])
    write_wav(mic, audio, 16000)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={mic}",
                 "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def test_page_hears_question_shows_transcript_plays_reply_and_latency(browser, server_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server_url)
    wait = WebDriverWait(browser, 60, poll_frequency=0.2)
    wait.until(lambda d: d.execute_script("return window.voiceStats.ready"))
    browser.find_element(By.ID, "talk").click()
    wait.until(lambda d: d.execute_script(
        "return window.voiceStats.turnEnds.length > 0 && window.voiceStats.audioChunksPlayed > 0"))
    stats = browser.execute_script("return window.voiceStats")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser-turn.png"))
    assert "capital of france" in browser.find_element(By.ID, "final").text.lower()
    reply = browser.find_element(By.ID, "reply").text.lower()
    assert "paris" in reply
    assert stats["audioSecondsPlayed"] > 0.3
    assert browser.find_element(By.ID, "m-gap").text.endswith("ms")
    assert stats["turnEnds"][0]["turn_gap_ms"] > 0 and not stats["errors"]
