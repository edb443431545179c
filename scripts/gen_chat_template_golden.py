#!/usr/bin/env python3
"""Generate golden outputs for weft's chat-template renderer.

Each template is rendered with Python jinja2 configured exactly like Hugging Face
transformers' ``apply_chat_template`` (ImmutableSandboxedEnvironment with
trim_blocks/lstrip_blocks and the loopcontrols extension, ``raise_exception``,
``strftime_now`` and a ``tojson`` filter that calls ``json.dumps`` without HTML
escaping).  Results are written to ``tests/golden/chat_template/<name>.json``; the
Rust test ``crates/weft-models/tests/chat_template_golden.rs`` asserts that weft
renders every case byte for byte the same (or fails with the same message).

Templates come from GGUF files (``tokenizer.chat_template``) when those are present,
and from the templates written into this script otherwise.  ``--from-golden``
re-renders the templates already stored in the golden files, so no model is needed.

    pip install jinja2 gguf
    python3 scripts/gen_chat_template_golden.py [--models /tmp/models] [--from-golden]
"""

import argparse
import json
import os
import sys
from datetime import datetime

try:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:  # pragma: no cover
    sys.exit("jinja2 is required: pip install jinja2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "golden", "chat_template")


class TemplateError(Exception):
    pass


def compile_template(source):
    """Mirror transformers.utils.chat_template_utils._compile_jinja_template."""

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


# --------------------------------------------------------------------------------------
# Templates written here (the Gemma 3 270M GGUF carries no template).

GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

LLAMA3 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Not a model's template: probes the Jinja/Python behaviour that real templates rely on
# (printing of None/True/lists/floats, pycompat string methods, tojson options,
# namespace, loop controls, slicing, filters) so that differences show up here first.
FEATURES = """{%- set ns = namespace(count=0, sys=none) -%}
{% for m in messages %}
{% if m.role == 'system' %}{% set ns.sys = m.content %}{% continue %}{% endif %}
{% set ns.count = ns.count + 1 %}
[{{ loop.index }}/{{ loop.length }}] {{ m.role | upper }} first={{ loop.first }} last={{ loop.last }} revindex={{ loop.revindex0 }}
  strip=<{{ m.content.strip() }}> lstrip=<{{ m.content.lstrip() }}> rstrip=<{{ m.content.rstrip() }}> trim=<{{ m.content | trim }}>
  starts={{ m.content.startswith('He') }} ends={{ m.content.endswith('!') }} len={{ m.content | length }} upper={{ m.content.upper() }}
  head=<{{ m.content[:4] }}> split={{ m.content.split() }} words={{ m.content.split(' ') | length }}
  json={{ m | tojson }}
  json_sorted={{ m | tojson(sort_keys=true) }} json_compact={{ m | tojson(separators=(',', ':')) }}
  in={{ 'content' in m }} get={{ m.get('name', 'anon') }} has_tool_calls={{ m.tool_calls is defined }}
{% if ns.count >= 4 %}{% break %}{% endif %}
{% endfor %}
count={{ ns.count }} sys={{ ns.sys }} none={{ none }} true={{ true }} false={{ false }} tools={{ tools }} undefined=[{{ nope }}]
list={{ [1, 'a', "it's", none, true, 1.5, [2.0]] }} dict={{ {'k': 'v', 'n': 1} }} tuple={{ (1, 'x') }}
math={{ 10 / 4 }} {{ 10 / 2 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 3 * 1.0 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1.5e-7 }} {{ -0.0 }}
filters={{ ['b', 'a', 'c'] | sort | join('-') }} {{ 'hello world' | title }} {{ 'x' * 3 }} {{ [3, 1, 2] | max }} {{ 'a' ~ 1 ~ none }}
strs={{ 'a,b,,c'.split(',') }} {{ '  x  '.strip() ~ '|' }} {{ 'Hello'.replace('l', 'L') }} {{ '-'.join(['p', 'q']) }} {{ 'abc'.find('c') }}
{% for k, v in {'one': 1, 'two': [1, 2]}.items() %}{{ k }}={{ v | tojson }};{% endfor %}

last={{ (messages | last).role if messages else 'n/a' }} roles={{ messages | map(attribute='role') | join(',') }}
indent={{ messages[-1:] | tojson(indent=2) }}
{% if add_generation_prompt %}GEN{{ eos_token }}{% else %}END{{ bos_token }}{% endif %}
"""


# --------------------------------------------------------------------------------------
# Conversations.


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = [
    ("single_user", [msg("user", "Hello!")]),
    ("system_user", [msg("system", "You are terse."), msg("user", "What is 2+2?")]),
    (
        "multi_turn",
        [
            msg("user", "Hi there"),
            msg("assistant", "Hello! How can I help?"),
            msg("user", "Tell me a joke."),
        ],
    ),
    (
        "system_multi_turn",
        [
            msg("system", "  Be nice.  \n"),
            msg("user", "Ping"),
            msg("assistant", "Pong"),
            msg("user", "Again"),
            msg("assistant", "Pong!"),
        ],
    ),
    (
        "unicode",
        [
            msg("user", "Привет 👋 — 你好, ümlaut\ttab \"quoted\" <tag> & 'apos' \\ back\u2028sep\x01"),
            msg("assistant", "Ответ: ✓ 🎉"),
            msg("user", "日本語で？"),
        ],
    ),
    ("empty_content", [msg("user", "")]),
    ("whitespace_content", [msg("user", "\n\n  padded text  \n\t"), msg("assistant", "  ok  ")]),
    (
        "jinja_in_content",
        [msg("user", "{{ bos_token }} {% if x %}raw{% endif %} {# c #}\n  indented\n")],
    ),
    ("system_only", [msg("system", "Only a system prompt.")]),
    (
        "long_multi_turn",
        [msg("user" if i % 2 == 0 else "assistant", f"turn {i}: " + "word " * i) for i in range(8)],
    ),
    ("non_alternating", [msg("user", "first"), msg("user", "second")]),
    ("assistant_first", [msg("assistant", "I speak first."), msg("user", "ok")]),
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city. Unicode: °C",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["city"],
        },
    },
}

TOOL_CONVERSATIONS = [
    ("tools_single_user", [msg("user", "Weather in Zürich?")], [WEATHER_TOOL]),
    (
        "tools_system_user",
        [msg("system", "Use tools when helpful."), msg("user", "Weather in Oslo?")],
        [WEATHER_TOOL, {"type": "function", "function": {"name": "noop", "parameters": {}}}],
    ),
]


def load_gguf_template(path):
    import gguf  # imported lazily: only needed when reading models

    reader = gguf.GGUFReader(path)
    fields = reader.fields

    def field(name):
        f = fields.get(name)
        return None if f is None else f.contents()

    template = field("tokenizer.chat_template")
    tokens = field("tokenizer.ggml.tokens")
    bos = field("tokenizer.ggml.bos_token_id")
    eos = field("tokenizer.ggml.eos_token_id")
    return template, tokens[bos], tokens[eos]


def template_specs(models_dir, from_golden):
    specs = []
    gguf_models = [
        ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("qwen2_5_coder", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    ]
    for name, file in gguf_models:
        golden = os.path.join(OUT_DIR, f"{name}.json")
        if from_golden:
            with open(golden, encoding="utf-8") as f:
                old = json.load(f)
            specs.append((name, old["origin"], old["template"], old["bos_token"], old["eos_token"], True))
        else:
            template, bos, eos = load_gguf_template(os.path.join(models_dir, file))
            specs.append((name, f"gguf:{file}", template, bos, eos, True))
    specs.append(("gemma3", "handwritten: Gemma 3 style", GEMMA3, "<bos>", "<eos>", False))
    specs.append(("llama3", "handwritten: Llama 3.1 style", LLAMA3, "<|begin_of_text|>", "<|eot_id|>", True))
    specs.append(("features", "handwritten: jinja2 feature probe", FEATURES, "<s>", "</s>", True))
    return specs


def render_case(compiled, bos, eos, messages, add_generation_prompt, tools=None):
    try:
        out = compiled.render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
        )
        return {"expected": out}
    except TemplateError as e:
        return {"error": str(e)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="/tmp/models", help="folder holding the GGUF files")
    ap.add_argument("--from-golden", action="store_true", help="reuse the templates stored in the golden files")
    args = ap.parse_args()

    os.makedirs(OUT_DIR, exist_ok=True)
    for name, origin, template, bos, eos, with_tools in template_specs(args.models, args.from_golden):
        compiled = compile_template(template)
        cases = []
        for conv_name, messages in CONVERSATIONS:
            for agp in (False, True):
                case = {"name": f"{conv_name}/{'gen' if agp else 'nogen'}", "messages": messages,
                        "add_generation_prompt": agp}
                case.update(render_case(compiled, bos, eos, messages, agp))
                cases.append(case)
        if with_tools:
            for conv_name, messages, tools in TOOL_CONVERSATIONS:
                case = {"name": f"{conv_name}/gen", "messages": messages, "tools": tools,
                        "add_generation_prompt": True}
                case.update(render_case(compiled, bos, eos, messages, True, tools))
                cases.append(case)
        doc = {
            "name": name,
            "origin": origin,
            "generator": "scripts/gen_chat_template_golden.py (jinja2 " + jinja2.__version__ + ")",
            "bos_token": bos,
            "eos_token": eos,
            "template": template,
            "cases": cases,
        }
        path = os.path.join(OUT_DIR, f"{name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        errors = sum(1 for c in cases if "error" in c)
        print(f"{path}: {len(cases)} cases ({errors} expected errors)")


if __name__ == "__main__":
    main()
