"""llama.cpp's greedy reply at the end of a tool-call round trip on Qwen2.5-Coder-0.5B-Instruct.

The server's test (tests/test_serve_tools.py) sends a conversation in which the model called
get_weather and got its result back, and compares minigpt's reply with the one recorded here: the
prompt is rendered by the GGUF's own chat template (with Jinja2 and Hugging Face's `tojson`, as
transformers' apply_chat_template does), tokenized and continued greedily by llama.cpp. It does not
import minigpt.

    $MINIGPT_LLAMA_VENV/bin/python tools/make_tool_reference.py [GGUF]

(a venv with `pip install llama-cpp-python jinja2`; GGUF defaults to the file `minigpt pull
qwen2.5-coder-0.5b-instruct --keep-source` keeps). Output: tests/fixtures/qwen2_tool_round_trip.json,
{"tools", "messages", "prompt", "prompt_ids", "reply_ids", "reply"}: at most MAX_NEW tokens, stopping
at <|im_end|> or <|endoftext|>.
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "qwen2_tool_round_trip.json")
MODEL = os.path.expanduser("~/.cache/minigpt/gguf/qwen2.5-coder-0.5b-instruct.gguf")
MAX_NEW = 60
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"]}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
MESSAGES = [
    {"role": "user", "content": "What is the weather like in Paris today?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 21, "sky": "sunny"}'},
]


def render(source, messages, tools):
    """The template as transformers renders it: trim_blocks, lstrip_blocks, a tojson that keeps key order
    and non-ASCII characters."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(source).render(messages=messages, tools=tools, add_generation_prompt=True)


def main():
    import llama_cpp

    path = sys.argv[1] if len(sys.argv) > 1 else MODEL
    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=2, verbose=False)
    prompt = render(llm.metadata["tokenizer.chat_template"], MESSAGES, TOOLS)
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    stop = {llm.tokenize(t.encode(), add_bos=False, special=True)[0] for t in ("<|im_end|>", "<|endoftext|>")}
    reply = []
    for t in llm.generate(ids, top_k=1, temp=0.0, reset=True):
        if t in stop or len(reply) == MAX_NEW:
            break
        reply.append(t)
    text = llm.detokenize(reply).decode("utf-8")
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"tools": TOOLS, "messages": MESSAGES, "prompt": prompt, "prompt_ids": ids, "reply_ids": reply,
                   "reply": text}, f, ensure_ascii=False, indent=1)
    print(f"{len(ids)} prompt ids, reply {len(reply)} tokens: {text!r}")


if __name__ == "__main__":
    main()
