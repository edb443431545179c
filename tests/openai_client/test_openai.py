"""weft serve against the official `openai` Python package.

Starts `weft serve` on a free 127.0.0.1 port with an API key, runs every check below
through `openai.OpenAI`, then stops the server with SIGTERM and expects a clean exit.
With a Whisper model directory, the server also holds it (`--audio-model`) and the
transcription route is checked with speech spoken by espeak-ng.

    python test_openai.py WEFT_BINARY MODEL_GGUF [WHISPER_DIR]
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import openai

KEY = "test-key"
NAME = "smol"
AUDIO_NAME = "whisper-base"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary, model, port, audio_model):
    audio = ["--audio-model", audio_model] if audio_model else []
    proc = subprocess.Popen(
        [binary, "serve", model, "--port", str(port), "--served-model-name", NAME,
         "--max-model-len", "1024", "--max-num-seqs", "8", "--shutdown-grace", "20", *audio],
        env={**os.environ, "WEFT_API_KEY": KEY},
        stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become healthy")


def ask(text):
    return [{"role": "system", "content": "You are brief."}, {"role": "user", "content": text}]


def test_models(c, audio):
    ids = [m.id for m in c.models.list().data]
    assert ids == ([NAME, AUDIO_NAME] if audio else [NAME]), ids


def test_transcription(c):
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", wav,
                        "She opened the kitchen window."], check=True)
        with open(wav, "rb") as f:
            result = c.audio.transcriptions.create(model=AUDIO_NAME, file=f)
    assert "kitchen window" in result.text.lower(), result.text


def test_chat_whole_and_stream(c):
    whole = c.chat.completions.create(model=NAME, messages=ask("Name a color."),
                                      max_tokens=12, temperature=0)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 12 and whole.usage.prompt_tokens > 5
    pieces, usage, finish = [], None, None
    for chunk in c.chat.completions.create(model=NAME, messages=ask("Name a color."),
                                           max_tokens=12, temperature=0, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            pieces.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert "".join(pieces) == text, (pieces, text)
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert finish == whole.choices[0].finish_reason


def test_completions_logprobs(c):
    r = c.completions.create(model=NAME, prompt="The capital of France is", max_tokens=5,
                             temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 5 and len(lp.token_logprobs) == 5
    assert all(len(t) == 3 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == r.choices[0].text
    assert max(lp.top_logprobs[0].values()) >= lp.token_logprobs[0] - 1e-6


def test_chat_logprobs(c):
    r = c.chat.completions.create(model=NAME, messages=ask("Hi"), max_tokens=4,
                                  temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_stop(c):
    full = c.completions.create(model=NAME, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    text = full.choices[0].text
    stop = text[len(text) // 2:][:2]
    cut = c.completions.create(model=NAME, prompt="1, 2, 3, 4,", max_tokens=12,
                               temperature=0, stop=[stop])
    assert stop not in cut.choices[0].text and text.startswith(cut.choices[0].text)
    assert cut.choices[0].finish_reason == "stop"


def test_n_and_seed(c):
    kw = dict(model=NAME, messages=ask("Invent a word."), max_tokens=8, temperature=1.0,
              n=3, seed=7)
    a = c.chat.completions.create(**kw)
    b = c.chat.completions.create(**kw)
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert [ch.message.content for ch in a.choices] == [ch.message.content for ch in b.choices]
    assert a.usage.completion_tokens == b.usage.completion_tokens


def test_json_schema(c):
    schema = {"type": "object",
              "properties": {"name": {"type": "string", "maxLength": 30},
                             "age": {"type": "integer"},
                             "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20},
                                         "maxItems": 3}},
              "required": ["name", "age", "hobbies"]}
    for seed in range(3):
        r = c.chat.completions.create(
            model=NAME, messages=ask("Describe a person in JSON."), max_tokens=120,
            temperature=0.8, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
        v = json.loads(r.choices[0].message.content)
        assert isinstance(v["name"], str) and isinstance(v["age"], int), v
        assert isinstance(v["hobbies"], list) and len(v["hobbies"]) <= 3, v
    r = c.chat.completions.create(model=NAME, messages=ask("Some JSON please."), max_tokens=60,
                                  response_format={"type": "json_object"}, temperature=0.5, seed=1)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
                   "required": ["city"]}}}]


def test_tools(c):
    r = c.chat.completions.create(model=NAME, messages=ask("Weather in Paris?"), max_tokens=60,
                                  tools=TOOLS, tool_choice="required", temperature=0)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls", ch
    call = ch.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # The conversation continues with the tool's answer.
    follow = c.chat.completions.create(
        model=NAME, max_tokens=16, temperature=0, tools=TOOLS,
        messages=ask("Weather in Paris?") + [
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}])
    assert follow.choices[0].message.content is not None or follow.choices[0].message.tool_calls
    named = c.chat.completions.create(
        model=NAME, messages=ask("Anything."), max_tokens=60, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_errors(c, port):
    def expect(exc, **kw):
        try:
            c.chat.completions.create(**{"model": NAME, "messages": ask("hi"), "max_tokens": 4, **kw})
        except exc as e:
            return e
        raise AssertionError(f"expected {exc.__name__} for {kw}")

    e = expect(openai.NotFoundError, model="no-such-model")
    assert "no-such-model" in e.message
    expect(openai.BadRequestError, temperature=3)
    expect(openai.BadRequestError, n=0)
    e = expect(openai.BadRequestError, messages=ask("word " * 1200))
    assert "1024" in e.message, e.message
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass


def main():
    binary, model = sys.argv[1], sys.argv[2]
    audio = sys.argv[3] if len(sys.argv) > 3 else None
    if audio and not shutil.which("espeak-ng"):
        print("espeak-ng is missing: skipping the transcription check (scripts/test.sh installs it)")
        audio = None
    port = free_port()
    proc = start(binary, model, port, audio)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0,
                           timeout=300)
    tests = [("test_models", lambda c: test_models(c, audio))]
    tests += [(t.__name__, t) for t in [
        test_chat_whole_and_stream, test_completions_logprobs, test_chat_logprobs, test_stop,
        test_n_and_seed, test_json_schema, test_tools]]
    if audio:
        tests.append(("test_transcription", test_transcription))
    tests.append(("test_errors", lambda c: test_errors(c, port)))
    failed = 0
    try:
        for name, t in tests:
            try:
                t(client)
                print(f"ok   {name}", flush=True)
            except Exception as e:  # report every failure, then exit non-zero
                failed += 1
                print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed"
    if code != 0:
        failed += 1
        print(f"FAIL server exit after SIGTERM: {code}")
    print(f"openai client tests: {len(tests) - min(failed, len(tests))} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
