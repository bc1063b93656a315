"""Speculative decoding by prompt lookup (speculate="ngram") against the plain token loop: decode speed and
whether the text is the same. The issue's targets (#16), on qwen2.5-coder-0.5b-instruct, 1 thread, greedy:
rewriting a given function with one change >= 1.8x the plain loop's decode tok/s, a story >= 0.97x, and the
same text both ways.

    python bench/speculate.py                                   # qwen2.5-coder-0.5b-instruct, 1 thread
    python bench/speculate.py -m smollm2-135m-instruct -t 2 -r 5 --json

Each task is one chat turn from a fresh session, run plain and speculative in turn (A B A B ...: a machine
that slows down or speeds up mid-run touches both alike). Decode tok/s is the turn's reply tokens over the
time from the end of the prefill to the last token (ChatSession.last). Printed per task: tok/s median
[min, max] of each, the ratio of the medians, the fraction of draft tokens taken, and whether every run
wrote the same text; --json prints every sample as one object.
"""

import argparse
import json
import platform
import statistics

import minigpt

FUNCTION = '''def fetch_all(urls, session, retries=3, backoff=0.5, timeout=10.0, log=None):
    """Download every URL in `urls` with `session`; returns {url: bytes}, skipping those that keep failing."""
    import time

    results, failures = {}, {}
    for url in urls:
        if url in results:
            continue
        attempt, delay = 0, backoff
        while True:
            attempt += 1
            try:
                response = session.get(url, timeout=timeout)
                if response.status_code == 429:
                    wait = float(response.headers.get("Retry-After", delay))
                    if log is not None:
                        log(f"{url}: rate limited, waiting {wait:.1f} s")
                    time.sleep(wait)
                    continue
                response.raise_for_status()
                results[url] = response.content
                break
            except Exception as error:
                failures[url] = str(error)
                if attempt >= retries:
                    if log is not None:
                        log(f"{url}: giving up after {attempt} attempts: {error}")
                    break
                if log is not None:
                    log(f"{url}: attempt {attempt} failed, retrying in {delay:.1f} s")
                time.sleep(delay)
                delay *= 2
    if log is not None:
        log(f"fetched {len(results)} of {len(urls)} URLs, {len(failures)} failed at least once")
    for url in results:
        failures.pop(url, None)
    return results
'''

TASKS = {   # name -> (message, reply tokens at most)
    "code": ("Rewrite this Python function so that the default number of retries is 5 instead of 3. Change nothing "
             "else. Reply with the whole function in one Python code block.\n\n```python\n" + FUNCTION + "```", 700),
    "story": ("Write a short story about a lighthouse keeper who finds a message in a bottle.", 400),
}
MODES = {"plain": None, "ngram": "ngram"}


def turn(m, message, max_tokens, speculate):
    chat = m.chat(temperature=0, max_tokens=max_tokens, seed=0, speculate=speculate)
    text = "".join(chat.send(message))
    s = chat.last
    return {"text": text, "tokens": s.reply_tokens, "decode_s": s.decode_seconds, "tok_s": s.decode_tps,
            "stop": s.stop, "drafted": s.drafted, "accepted": s.accepted}


def spread(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="qwen2.5-coder-0.5b-instruct", help="a known name or a .mgpt path")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("-r", "--reps", type=int, default=3, help="runs of each mode per task")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of: {', '.join(TASKS)}")
    ap.add_argument("--max-tokens", type=int, default=None, help="reply tokens at most (default: the task's)")
    ap.add_argument("--json", action="store_true", help="print every sample as JSON")
    a = ap.parse_args()
    tasks = a.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        ap.error(f"unknown task {unknown[0]} (known: {', '.join(TASKS)})")

    m = minigpt.load(a.model, threads=a.threads)
    out = {"model": m.name, "threads": m.threads, "backend": m.kern.name, "machine": platform.machine(),
           "reps": a.reps, "tasks": {}}
    for name in tasks:
        message, max_tokens = TASKS[name]
        max_tokens = a.max_tokens or max_tokens
        runs = {mode: [] for mode in MODES}
        for _ in range(a.reps):   # A B A B
            for mode, speculate in MODES.items():
                runs[mode].append(turn(m, message, max_tokens, speculate))
        texts = {r["text"] for rs in runs.values() for r in rs}
        plain, ngram = (spread([r["tok_s"] for r in runs[mode]]) for mode in MODES)
        drafted = sum(r["drafted"] for r in runs["ngram"])
        out["tasks"][name] = {
            "max_tokens": max_tokens, "tokens": runs["plain"][0]["tokens"], "stop": runs["plain"][0]["stop"],
            "plain_tok_s": plain, "ngram_tok_s": ngram, "ratio": ngram["median"] / plain["median"],
            "accepted": sum(r["accepted"] for r in runs["ngram"]) / drafted if drafted else 0.0,
            "same_text": len(texts) == 1, "runs": runs}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['model']}, {out['threads']} thread(s), {out['backend']} backend, {a.reps} runs each, "
          f"interleaved A B A B, greedy")
    for name, t in out["tasks"].items():
        p, g = t["plain_tok_s"], t["ngram_tok_s"]
        print(f"{name:6} {t['tokens']:4} tokens ({t['stop']})  plain {p['median']:6.1f} tok/s "
              f"[{p['min']:.1f}, {p['max']:.1f}]  ngram {g['median']:6.1f} tok/s [{g['min']:.1f}, {g['max']:.1f}]  "
              f"x{t['ratio']:.2f}  drafts taken {100 * t['accepted']:.0f} %  "
              f"same text: {'yes' if t['same_text'] else 'NO'}")


if __name__ == "__main__":
    main()
