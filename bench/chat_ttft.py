"""Time to first token by turn of a chat: the session keeps its KV cache, so each turn prefills only its new tokens.

    python bench/chat_ttft.py                          # smollm2-135m-instruct, 10 turns, 5 repetitions, 1 thread
    python bench/chat_ttft.py -t 2 --lang zh -r 9 --json

One repetition is a conversation in a fresh ChatSession (minigpt/chat.py): N user messages of equal length in
tokens (--msg-tokens, default 48: the built-in messages are cut at the last word, or character, that gives
exactly that many; the table shows what was prefilled), greedy replies of at most --max-tokens. For every turn:
TTFT, from the send() call to its first text piece, split into prefill (the new tokens, in steps of
chat.PREFILL_STEP) and the rest (rendering the template, tokenizing the new text, sampling the first token); the tokens prefilled (chat.last.prompt_tokens); the context before and after the turn
(chat.n_past); the reply's length, why it ended, and decode tok/s.

The contrast, what reuse saves (--contrast all|last|none): right after turn k, a fresh session given the same
k-1 earlier turns as its history (set, not prefilled) sends the same message, so its first send prefills the
whole conversation, as a session without cache reuse would; timed the same way (to its first piece).

Then the steadiest figure (--pairs P, default 20): turn 1 and turn N timed alternately, A B A B, turn 1 in a
fresh session, turn N in one session holding turns 1..N-1 that takes the message back (undo) after each
timing; the per-pair ratio TTFT(turn N) / TTFT(turn 1), median [min, max].

Printed: per turn median [min, max] over the repetitions ("1st piece": tokens sampled before the first text
piece, more than 1 when a character spans tokens), and the headline TTFT(turn N) / TTFT(turn 1) as median
[min, max] of the per-repetition ratios and as the ratio of the fastest runs of each turn (also against turn 2,
the first turn whose prefill has no system prompt in it, so the same token count as turn N). --json prints every
sample as one JSON object instead; --out FILE writes it as well.
"""

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

import minigpt
from minigpt.chat import PREFILL_STEP

# --- the messages: distinct questions, 48 tokens each for SmolLM2's tokenizer (cut to --msg-tokens for others)

EN = [
    "I am planning a small vegetable garden behind my house this spring. Which vegetables grow well for a beginner, "
    "how much sun do they need every single day, and how often should I water them during a long, dry and very hot "
    "summer?",
    "My grandmother kept bees for many years and now I would like to start too. What equipment does a new beekeeper "
    "need, what does it all cost, and how do you keep a hive healthy through a long, cold and wet winter?",
    "I want to learn to bake bread at home without a machine. Could you explain how yeast makes the dough rise, why "
    "kneading matters so much, and what usually goes wrong for people who try it at home for the very first time?",
    "Our small town is building a new public library next to the river. What should the planners think about when "
    "they choose the windows, the heating, the tall shelves, the lights, and the quiet rooms for students who come "
    "there to study?",
    "I run three times a week but my knees hurt after the long runs on Sunday mornings. What are the common causes of "
    "knee pain in runners, which exercises make the legs stronger, and when should I go and see a doctor about it?",
    "Please explain how a bicycle stays upright while it moves forward. Why is it so very hard indeed to balance when "
    "standing still, what part does the front wheel play, and why do young children learn faster on a smaller and "
    "much lighter bike?",
    "We are moving to a northern city where it snows for five months of the year. How should we prepare our car, our "
    "clothes and our home, and what do people there do to stay cheerful in the long, dark winter months?",
    "I found an old film camera in a box in my attic and want to use it. How does film record a picture, where can I "
    "still buy film and get it developed, and what settings should I try on a bright sunny day?",
    "Tell me how the tides in the sea work. Why are there two high tides on most days, what does the moon have to do "
    "with it, and why are the tides so much bigger in some narrow bays than in other places nearby?",
    "My team at work argues a lot in meetings and nothing ever gets decided. What simple rules could we all agree on "
    "so that everyone is heard, meetings always end right on time, and each decision has one clear owner who follows "
    "it up?",
    "I would like to read more books this year but I keep getting distracted by my phone. What habits help people "
    "read every day, how do you pick the books you will really finish, and is listening to audiobooks just as good?",
    "Could you describe how a volcano forms and why some of them explode violently while others only pour out rivers "
    "of lava? Which famous eruptions changed the weather around the world, and how do scientists try to warn all the "
    "people living nearby in time?",
]

ZH = [
    "我想在家后面开一个小菜园。新手种哪些蔬菜比较容易？",
    "我想学养蜜蜂。新手要准备哪些工具？冬天要怎么办？",
    "我想学做面包。酵母怎样让面团发起来？要揉面吗？",
    "镇上要建新图书馆。选择窗户、暖气和书架时要考虑什么？",
    "我跑步以后膝盖疼。这是什么原因？应该做哪些练习？",
    "自行车在前进的时候为什么不倒？前轮起了什么作用？停着呢？",
    "我们要搬到一个经常下雪的城市。应该怎样准备汽车和房屋？",
    "我找到一台旧胶片相机。哪里还能买胶卷？怎样冲洗？",
    "为什么多数日子有两次涨潮？月亮和潮汐有什么关系？",
    "我们开会经常争论。应该定哪些规则，让会议能按时结束？",
    "我想多读书，可是总被手机分心。什么习惯能帮助人读书？",
    "火山是怎样形成的？为什么有的火山会爆发，有的火山不会？",
]

MESSAGES = {"en": EN, "zh": ZH}


def cut(tokenizer, text, n):
    """`text` cut to n tokens: at the last word boundary that gives exactly n, else at a character that does,
    else the longest word prefix under n. Text without spaces goes by characters. Shorter text is kept."""
    count = lambda t: len(tokenizer.encode(t))
    if count(text) <= n:
        return text
    fallback = ""
    if " " in text:
        words = text.split(" ")
        for k in range(len(words) - 1, 0, -1):
            t = " ".join(words[:k])
            c = count(t)
            if c == n:
                return t
            if c < n:
                fallback = t
                break
    for k in range(len(text) - 1, 0, -1):
        c = count(text[:k])
        if c == n:
            return text[:k]
        if c < n:
            return fallback or text[:k]
    return fallback


# --- timing one send

def timed_send(chat, text):
    """Send `text`, reading the whole reply; TTFT is the time from the call to the first text piece."""
    t0 = time.perf_counter()
    pieces = chat.send(text)
    next(pieces, None)     # None: the reply was empty (end of turn at once); then TTFT is the whole send
    ttft = time.perf_counter() - t0
    last = chat.last
    r = {"ttft_s": ttft, "prefill_s": last.prefill_seconds, "prompt_tokens": last.prompt_tokens,
         "first_piece_tokens": last.reply_tokens,   # tokens sampled before the first piece (a held-back UTF-8 tail)
         "dropped_turns": last.dropped_turns}       # > 0: the context was full, the conversation re-read
    for _ in pieces:
        pass
    r.update(reply_tokens=last.reply_tokens, stop=last.stop, decode_tok_s=last.decode_tps, n_past=chat.n_past)
    return r


def conversation(m, msgs, a, rep):
    """One repetition: a fresh session, one send per message; the per-turn dicts."""
    chat = m.chat(system=a.system, temperature=0, max_tokens=a.max_tokens, seed=rep)
    turns = []
    for k, text in enumerate(msgs, 1):
        history, n_before = chat.history, chat.n_past
        r = timed_send(chat, text)
        r["n_past_before"] = n_before
        if a.contrast == "all" or (a.contrast == "last" and k == len(msgs)):
            fresh = m.chat(system=a.system, temperature=0, max_tokens=1, seed=rep)
            fresh.messages = history          # the earlier turns, not in its cache: the first send prefills them
            nr = timed_send(fresh, text)
            r["no_reuse"] = {key: nr[key] for key in ("ttft_s", "prefill_s", "prompt_tokens")}
        turns.append(r)
    return turns


def first_piece(chat, text):
    """TTFT of one send; then the reply is cancelled (its first token still enters the cache)."""
    t0 = time.perf_counter()
    pieces = chat.send(text)
    next(pieces, None)
    ttft = time.perf_counter() - t0
    chat.cancel()
    for _ in pieces:
        pass
    return ttft


def interleaved(m, msgs, a):
    """Turn 1 and turn N timed alternately (A B A B ...), so that the machine's ups and downs hit both alike:
    turn 1 in a fresh session each time; turn N in one session that holds turns 1..N-1 and takes its
    message back (undo) after each timing. Returns the TTFTs and the ratio of each pair."""
    long = m.chat(system=a.system, temperature=0, max_tokens=a.max_tokens, seed=0)
    for text in msgs[:-1]:
        for _ in long.send(text):
            pass
    before = long.n_past
    firsts, lasts = [], []
    for _ in range(a.pairs):
        firsts.append(first_piece(m.chat(system=a.system, temperature=0, max_tokens=a.max_tokens, seed=0), msgs[0]))
        lasts.append(first_piece(long, msgs[-1]))
        long.undo()
        assert long.n_past == before   # back where it was: the next timing prefills the same tokens
    return {"first_s": spread(firsts), "last_s": spread(lasts), "n_past_before_last": before,
            "ratio": spread([b / f for f, b in zip(firsts, lasts)])}


def run(a):
    """The whole benchmark as a JSON-ready dict."""
    t0 = time.perf_counter()
    m = minigpt.load(a.model, threads=a.threads, kv_type=a.kv_type)
    load_s = time.perf_counter() - t0
    msgs = [cut(m.tokenizer, MESSAGES[a.lang][i % len(MESSAGES[a.lang])], a.msg_tokens) for i in range(a.turns)]

    warm = m.chat(system=a.system, temperature=0, max_tokens=2)   # first touches of the weights, thread start
    for _ in warm.send(msgs[0]):
        pass

    reps = []
    for rep in range(a.reps):
        reps.append(conversation(m, msgs, a, rep))
        t = reps[-1]
        print(f"repetition {rep + 1}/{a.reps}: TTFT turn 1 {t[0]['ttft_s'] * 1e3:.1f} ms, turn {len(t)} "
              f"{t[-1]['ttft_s'] * 1e3:.1f} ms", file=sys.stderr, flush=True)

    pairs = interleaved(m, msgs, a) if a.pairs and a.turns > 1 else None
    isa = getattr(m.kern, "isa", None)
    return {
        "model": {"path": str(m.path), "name": m.config.name, "arch": m.config.arch},
        "backend": m.kern.name, "isa": isa() if callable(isa) else None, "threads": m.threads,
        "precision": m.engine.precision, "kv_type": m.kv_type, "load_s": load_s,
        "settings": {"turns": a.turns, "reps": a.reps, "max_tokens": a.max_tokens, "lang": a.lang,
                     "msg_tokens": a.msg_tokens, "system": a.system, "contrast": a.contrast, "temperature": 0,
                     "pairs": a.pairs,
                     "prefill_step": PREFILL_STEP, "n_ctx": m.n_ctx},
        "messages": msgs,
        "message_tokens": [len(m.tokenizer.encode(t)) for t in msgs],
        "turns": [{"turn": k + 1, "runs": [r[k] for r in reps]} for k in range(a.turns)],
        "summary": summary(reps),
        "interleaved": pairs,
        "machine": machine(),
        "versions": {"minigpt": minigpt.__version__, "python": platform.python_version(), "numpy": np.__version__},
    }


# --- the report

def spread(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def summary(reps):
    """Per-repetition ratios, summarized: last turn against turn 1 and 2; no reuse against reuse. Also the ratio
    of the fastest runs (min over repetitions of each turn): on a shared machine, the least disturbed estimate."""
    fastest = lambda k: min(t[k]["ttft_s"] for t in reps)
    s = {"ttft_last_over_first": spread([t[-1]["ttft_s"] / t[0]["ttft_s"] for t in reps]),
         "ttft_last_over_first_fastest": fastest(-1) / fastest(0)}
    if len(reps[0]) > 1:
        s["ttft_last_over_second"] = spread([t[-1]["ttft_s"] / t[1]["ttft_s"] for t in reps])
        s["ttft_last_over_second_fastest"] = fastest(-1) / fastest(1)
    if "no_reuse" in reps[0][-1]:
        s["no_reuse_over_reuse_last"] = spread([t[-1]["no_reuse"]["ttft_s"] / t[-1]["ttft_s"] for t in reps])
    return s


def machine():
    info = {"os": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def _cell(xs, fmt="{:.1f}"):
    """median [min, max], or the one value when they agree."""
    lo, mid, hi = min(xs), statistics.median(xs), max(xs)
    if fmt.format(lo) == fmt.format(hi):
        return fmt.format(mid)
    return f"{fmt.format(mid)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def _stops(runs):
    counts = {}
    for r in runs:
        counts[r["stop"]] = counts.get(r["stop"], 0) + 1
    return ", ".join(k if len(counts) == 1 else f"{k} {n}" for k, n in counts.items())


def format_table(d):
    s, turns = d["settings"], d["turns"]
    ms = lambda runs, key: _cell([r[key] * 1e3 for r in runs])
    lines = [
        f"model: {d['model']['name'] or d['model']['path']} ({d['model']['path']})",
        f"backend {d['backend']}" + (f" ({d['isa']})" if d["isa"] else "") + f", {d['precision']} precision, "
        f"{d.get('kv_type', 'f32')} KV cache, "
        f"{d['threads']} thread{'s' if d['threads'] > 1 else ''}; machine: {d['machine'].get('cpu', '?')}",
        f"{s['turns']} turns x {s['reps']} repetitions; messages: {s['lang']}, {_cell(d['message_tokens'], '{:.0f}')} "
        f"tokens; replies greedy, at most {s['max_tokens']} tokens; median [min, max] over repetitions",
        "",
    ]
    head = ["turn", "prefilled", "ctx start", "ctx end", "TTFT ms", "prefill ms", "rest ms", "1st piece",
            "reply tokens (stop)", "decode tok/s"]
    contrast = [t for t in turns if "no_reuse" in t["runs"][0]]
    if contrast:
        head += ["no reuse: prefilled", "TTFT ms"]
    rows = [head]
    for t in turns:
        runs = t["runs"]
        row = [str(t["turn"]), _cell([r["prompt_tokens"] for r in runs], "{:.0f}"),
               _cell([r["n_past_before"] for r in runs], "{:.0f}"), _cell([r["n_past"] for r in runs], "{:.0f}"),
               ms(runs, "ttft_s"), ms(runs, "prefill_s"), _cell([(r["ttft_s"] - r["prefill_s"]) * 1e3 for r in runs]),
               _cell([r["first_piece_tokens"] for r in runs], "{:.0f}"),
               f"{_cell([r['reply_tokens'] for r in runs], '{:.0f}')} ({_stops(runs)})",
               _cell([r["decode_tok_s"] for r in runs])]
        if contrast:
            nr = [r["no_reuse"] for r in runs if "no_reuse" in r]
            row += [_cell([r["prompt_tokens"] for r in nr], "{:.0f}"), ms(nr, "ttft_s")] if nr else ["", ""]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]

    sm, n = d["summary"], len(turns)
    lines.append("")
    lines.append(f"TTFT turn {n} / turn 1: {_cell(sm['ttft_last_over_first']['samples'], '{:.2f}')}; "
                 f"fastest runs {sm['ttft_last_over_first_fastest']:.2f}")
    if "ttft_last_over_second" in sm:
        lines.append(f"TTFT turn {n} / turn 2: {_cell(sm['ttft_last_over_second']['samples'], '{:.2f}')}; "
                     f"fastest runs {sm['ttft_last_over_second_fastest']:.2f}"
                     "  (turn 2 prefills as many tokens as turn N; turn 1 also the system prompt)")
    if "no_reuse_over_reuse_last" in sm:
        last = [r["no_reuse"] for r in turns[-1]["runs"]]
        lines.append(f"turn {n} without cache reuse: {_cell([r['prompt_tokens'] for r in last], '{:.0f}')} tokens "
                     f"prefilled, TTFT {ms(last, 'ttft_s')} ms = "
                     f"{_cell(sm['no_reuse_over_reuse_last']['samples'], '{:.1f}')}x turn {n} with reuse")
    p = d.get("interleaved")
    if p:
        lines.append(f"interleaved, {s['pairs']} pairs A B A B (turn {n} after {p['n_past_before_last']} positions): "
                     f"TTFT turn 1 {_cell([x * 1e3 for x in p['first_s']['samples']])} ms, turn {n} "
                     f"{_cell([x * 1e3 for x in p['last_s']['samples']])} ms; turn {n} / turn 1 per pair "
                     f"{_cell(p['ratio']['samples'], '{:.2f}')}")
    return "\n".join(lines)


# ---

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="A .mgpt file or a known model name (default: minigpt's).")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--kv-type", default=minigpt.engine.DEFAULT_KV_TYPE, choices=minigpt.engine.KV_TYPES,
                    help="How the session's KV cache stores keys and values.")
    ap.add_argument("-n", "--turns", type=int, default=10)
    ap.add_argument("-r", "--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64, help="Reply length cap (replies may end sooner).")
    ap.add_argument("--msg-tokens", type=int, default=48, help="Length of every user message, in tokens.")
    ap.add_argument("--lang", choices=sorted(MESSAGES), default="en")
    ap.add_argument("--system", default=None, help="System prompt (default: the template's own, if any).")
    ap.add_argument("--contrast", choices=("all", "last", "none"), default="all",
                    help="Turns also timed without cache reuse.")
    ap.add_argument("--pairs", type=int, default=20,
                    help="Then time turn 1 and the last turn alternately this many times (0: don't).")
    ap.add_argument("--json", action="store_true", help="Print every sample as one JSON object, not the table.")
    ap.add_argument("--out", default=None, help="Also write the JSON to this file.")
    a = ap.parse_args()
    if a.turns < 1 or a.reps < 1 or a.max_tokens < 1 or a.msg_tokens < 1 or a.threads < 1 or a.pairs < 0:
        raise SystemExit(f"bad sizes: turns {a.turns}, reps {a.reps}, max tokens {a.max_tokens}, "
                         f"message tokens {a.msg_tokens}, threads {a.threads}")
    try:
        d = run(a)
    except minigpt.MinigptError as e:
        raise SystemExit(f"error: {e}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(d, f, indent=1)
            f.write("\n")
    print(json.dumps(d, indent=1) if a.json else format_table(d))


if __name__ == "__main__":
    main()
