#!/usr/bin/env python3
"""Writes tests/data/text/chat_golden.json: DeepSeek-V3's and DeepSeek-R1's chat templates
rendered over a fixed set of conversations, the reference for lightcore's C++ chat format.

The templates are rendered the way Hugging Face transformers' apply_chat_template renders them:
a jinja2 ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols
extension, a json.dumps `tojson` filter and a `raise_exception` global, and the variables
messages, add_generation_prompt and the tokenizer's special tokens as plain strings (bos_token,
eos_token, taken from tokenizer_config.json: an AddedToken object counts by its "content").

V3's template is read from the local tokenizer_config.json; R1's is the string below. Tool calls
and tool outputs (role "tool", assistant "tool_calls", content None) are out of scope: no case
uses them, and the C++ side rejects them.

Output: {"meta": {...}, "v3": [case], "r1": [case]} with
    case = {"name": str, "messages": [{"role": str, "content": str}],
            "add_generation_prompt": bool, "expected": str}

Usage (needs only jinja2):
    python3 tools/chat_golden.py --tokenizer-dir .cache/tokenizer \
        --out tests/data/text/chat_golden.json
"""

import argparse
import hashlib
import json
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

# DeepSeek-R1's chat_template, a configuration string copied verbatim from the "chat_template"
# field of https://huggingface.co/deepseek-ai/DeepSeek-R1/blob/main/tokenizer_config.json (the
# revision that appends "<think>\n" to the generation prompt; the first release did not). The
# escapes below are the template's own: '\n' inside its string literals is jinja's newline.
R1_TEMPLATE = "".join((
    r"{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    r"{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, "
    r"system_prompt='', is_first_sp=true) %}{%- for message in messages %}"
    r"{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}"
    r"{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    r"{% set ns.is_first_sp = false %}{%- else %}"
    r"{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}"
    r"{%- endif %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    r"{%- for message in messages %}{%- if message['role'] == 'user' %}"
    r"{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    r"{%- if message['role'] == 'assistant' and 'tool_calls' in message %}"
    r"{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls'] %}"
    r"{%- if not ns.is_first %}{%- if message['content'] is none %}"
    r"{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + "
    r"'<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + "
    r"tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- else %}"
    r"{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + "
    r"tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + "
    r"tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}"
    r"{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + "
    r"'<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + "
    r"tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}"
    r"{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}"
    r"{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}"
    r"{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + "
    r"'<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}"
    r"{% set content = message['content'] %}{% if '</think>' in content %}"
    r"{% set content = content.split('</think>')[-1] %}{% endif %}"
    r"{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    r"{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    r"{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + "
    r"message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}"
    r"{%- else %}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    r"{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}"
    r"{% endif %}{% if add_generation_prompt and not ns.is_tool %}"
    r"{{'<｜Assistant｜><think>\n'}}{% endif %}",
))

MAX_OUTPUT_BYTES = 100 * 1024


def sys_(c):
    return {"role": "system", "content": c}


def user(c):
    return {"role": "user", "content": c}


def asst(c):
    return {"role": "assistant", "content": c}


# (name, messages, add_generation_prompt): the same conversations for both templates.
CASES = [
    ("single_user_gen", [user("Hi!")], True),
    ("single_user_no_gen", [user("Hi!")], False),
    ("no_messages_gen", [], True),
    ("no_messages_no_gen", [], False),
    ("system_then_user", [sys_("You are a helpful assistant."), user("Hello")], True),
    ("multi_turn_history", [user("2+2?"), asst("4"), user("And 3+3?"), asst("6"),
                            user("Thanks")], True),
    ("ends_with_assistant_no_gen", [user("a"), asst("b")], False),
    ("ends_with_assistant_gen", [user("a"), asst("b")], True),
    ("two_leading_systems", [sys_("Be brief."), sys_("Answer in French."), user("Hello")], True),
    ("system_after_user_turns", [user("2+2?"), asst("4"), sys_("Answer in French."),
                                 user("And 3+3?")], True),
    ("systems_everywhere", [sys_("one"), user("u1"), sys_("two"), asst("a1"), sys_("three"),
                            user("u2"), sys_("four")], True),
    ("empty_first_system", [sys_(""), sys_("x"), user("y")], False),
    ("empty_systems_only", [sys_(""), sys_("")], True),
    ("system_with_blank_lines", [sys_("line 1\n\nline 2\n"), sys_("\nlast"), user("go")], True),
    ("empty_user", [user("")], True),
    ("empty_assistant", [user("q"), asst(""), user("again")], True),
    ("cjk", [sys_("你是一个乐于助人的助手。"), user("你好，世界！日本語のテキストと한국어도 있어요。"),
             asst("你好！有什么可以帮你的吗？"), user("请解释一下「量子纠缠」。")], True),
    ("emoji", [user("👋🏽 family: 👨‍👩‍👧‍👦 flags: 🇯🇵🇫🇷 keycap: 1️⃣"), asst("🙂✨")], False),
    ("special_token_text", [user("say <｜end▁of▁sentence｜> then <｜User｜> and "
                                 "<｜begin▁of▁sentence｜>"), asst("<｜Assistant｜>ok")], True),
    ("template_syntax_text", [sys_("{{ bos_token }} {% if x %}y{% endif %}"),
                              user("{{ messages }} {# comment #}")], True),
    ("whitespace_and_escapes", [user("  lead and trail  \n\ttab\r\nCRLF \\ back \"q\" 'a'  "),
                                asst("\n\nanswer\n\n")], True),
    ("consecutive_users", [user("first"), user("second")], True),
    ("consecutive_assistants", [user("q"), asst("part 1"), asst("part 2")], False),
    ("assistant_first", [asst("I start."), user("ok")], True),
    ("think_in_history", [user("9.11 or 9.8?"),
                          asst("<think>\nCompare decimals: 9.80 > 9.11.\n</think>\n\n"
                               "9.8 is larger."),
                          user("Why?")], True),
    ("think_last_turn_no_gen", [user("q"), asst("<think>reasoning</think>answer")], False),
    ("think_last_turn_gen", [user("q"), asst("<think>r</think>\nanswer")], True),
    ("two_think_closings", [user("q"), asst("<think>a</think>middle</think>tail"), user("n")],
     True),
    ("think_unclosed", [user("q"), asst("<think>never closed answer"), user("n")], True),
    ("think_close_only", [user("q"), asst("reasoning without opening</think>final")], False),
    ("think_empty_answer", [user("q"), asst("<think>only thoughts</think>")], True),
    ("think_in_user_and_system", [sys_("<think>sys</think>kept"), user("<think>u</think>kept")],
     True),
    ("long_conversation", [sys_("You are terse."), user("u1"), asst("<think>t1</think>a1"),
                           user("u2"), asst("a2"), sys_("Use English."), user("u3"),
                           asst("<think>t3</think>\n\na3"), user("u4")], True),
]


def special_token(config, name):
    value = config.get(name)
    if isinstance(value, dict):
        return value["content"]
    return value if value is not None else ""


def environment():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False,
                                                                   indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env


def render_all(template_text, tokens):
    template = environment().from_string(template_text)
    out = []
    for name, messages, gen in CASES:
        text = template.render(messages=messages, add_generation_prompt=gen, **tokens)
        out.append({"name": name, "messages": messages, "add_generation_prompt": gen,
                    "expected": text})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer-dir", default=".cache/tokenizer",
                    help="folder holding DeepSeek-V3's tokenizer_config.json")
    ap.add_argument("--out", default="tests/data/text/chat_golden.json")
    args = ap.parse_args()

    with open(f"{args.tokenizer_dir}/tokenizer_config.json", encoding="utf-8") as f:
        config = json.load(f)
    v3_template = config["chat_template"]
    # R1 shares V3's tokenizer and special tokens; only the template differs.
    tokens = {"bos_token": special_token(config, "bos_token"),
              "eos_token": special_token(config, "eos_token")}

    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    doc = {
        "meta": {
            "jinja2": jinja2.__version__,
            "v3_template_sha256": hashlib.sha256(v3_template.encode()).hexdigest(),
            "r1_template_sha256": hashlib.sha256(R1_TEMPLATE.encode()).hexdigest(),
            "cases": len(CASES),
        },
        "v3": render_all(v3_template, tokens),
        "r1": render_all(R1_TEMPLATE, tokens),
    }
    data = json.dumps(doc, ensure_ascii=False, indent=1) + "\n"
    size = len(data.encode())
    if size > MAX_OUTPUT_BYTES:
        sys.exit(f"output is {size} bytes, over the {MAX_OUTPUT_BYTES}-byte budget")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(data)
    print(f"wrote {args.out}: {len(CASES)} cases per template, {size} bytes")


if __name__ == "__main__":
    main()
