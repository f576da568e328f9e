"""POST /api/batch_synthesize: many texts in one request, bounded, quota charged per successful text."""
import base64
import hashlib

import pytest

from audio import decoded_seconds, probe
from fakes.engines import FakeEngine, COSY_SPEAKERS
from test_voices import config, extract, make_audio


def sha(k):
    return hashlib.sha256(k.encode()).hexdigest()


@pytest.fixture
def cosy():
    f = FakeEngine("cosyvoice", speakers=list(COSY_SPEAKERS) + ["bv"]).start()
    yield f
    f.stop()


def test_batch_with_a_library_voice(hub_factory, cosy):
    h = hub_factory(config(cosy))
    assert extract(h, make_audio("wav", 3.0), voice_id="bv").status_code == 201
    texts = ["First sentence.", "Second one, a little longer than the first.", "Third."]
    r = h.post("/api/batch_synthesize", json={"texts": texts, "voice_id": "bv", "output_format": "mp3"})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["success"] is True and b["total"] == 3 and b["succeeded"] == 3 and b["failed"] == 0
    assert [x["index"] for x in b["results"]] == [0, 1, 2]
    lengths = []
    for x in b["results"]:
        audio = base64.b64decode(x["audio_base64"])
        assert x["success"] is True and x["size"] == len(audio) > 0
        st, _ = probe(audio, "mp3")
        assert st["codec_name"] == "mp3"
        lengths.append(decoded_seconds(audio, "mp3"))
    assert lengths[1] > lengths[0] > lengths[2]  # each text got its own audio, in order
    line = [x for x in h.log_lines() if x.get("msg") == "access" and x.get("route") == "/api/batch_synthesize"][-1]
    assert line["voice_id"] == "bv" and line["chars"] == sum(len(t) for t in texts)


def test_batch_bad_requests(hub_factory, cosy):
    h = hub_factory(config(cosy))

    def err(body, status, code):
        r = h.post("/api/batch_synthesize", json=body)
        assert r.status_code == status, r.text
        assert r.json()["success"] is False and r.json()["code"] == code, r.text

    err({"texts": ["x"] * 33, "voice_id": "en-us"}, 400, "too_many_texts")
    err({"texts": [], "voice_id": "en-us"}, 400, "missing_texts")
    err({"voice_id": "en-us"}, 400, "missing_texts")
    err({"texts": ["ok", ""], "voice_id": "en-us"}, 400, "invalid_text")
    err({"texts": ["ok", 5], "voice_id": "en-us"}, 400, "invalid_text")
    err({"texts": ["ok"]}, 400, "missing_voice_id")
    err({"texts": ["ok"], "voice_id": "en-us", "output_format": "ogg"}, 400, "invalid_response_format")
    r = h.post("/api/batch_synthesize", data=b"[1,2", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    # 32 texts are fine, on a configured voice too
    r = h.post("/api/batch_synthesize", json={"texts": ["Hi %d." % i for i in range(32)], "voice_id": "en-us",
                                             "engine": "local", "output_format": "wav"})
    assert r.status_code == 200 and r.json()["succeeded"] == 32, r.text


QUOTA = ("auth:\n  mode: api_key\n  keys:\n"
         f'    - {{ id: kq, sha256: "{sha("key-q")}", tenant: q, role: user }}\n'
         "tenants:\n  q: { quota: { chars_per_day: 25 } }\n")


def test_batch_quota_is_charged_per_successful_text(hub_factory, cosy):
    h = hub_factory(config(cosy, auth=QUOTA))
    auth = {"Authorization": "Bearer key-q"}
    assert extract(h, make_audio("wav", 3.0), headers=auth, voice_id="bv").status_code == 201
    ten = "abcdefghij"  # 10 characters
    cosy.set_fault("status_500")  # every synthesis fails: nothing may be charged
    r = h.post("/api/batch_synthesize", json={"texts": [ten, ten], "voice_id": "bv"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["succeeded"] == 0 and r.json()["failed"] == 2 and r.json()["success"] is False
    assert all(x["error"] for x in r.json()["results"])
    cosy.clear_fault()
    r = h.post("/api/batch_synthesize", json={"texts": [ten, ten], "voice_id": "bv"}, headers=auth)
    assert r.json()["succeeded"] == 2, r.text  # 20 of 25: the failed batch was refunded
    r = h.post("/api/batch_synthesize", json={"texts": [ten, "abc"], "voice_id": "bv"}, headers=auth)
    b = r.json()
    assert b["succeeded"] == 1 and b["failed"] == 1, b  # 10 more would pass 25; 3 more fit
    assert b["results"][1]["success"] is True and "quota" in b["results"][0]["error"]
