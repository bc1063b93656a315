"""The process that renders chat templates (template.py starts it): untrusted Jinja2 runs here, in Jinja2's
immutable sandbox, under a memory limit the OS enforces, while the parent holds a deadline. Nothing a
template does can then hang, bloat or crash the program that asked for the prompt.

It imports nothing of minigpt (it starts in a tenth of a second) and runs in Python's isolated mode:

    python -I template_worker.py MEMORY_BYTES [FOLDER...]       # FOLDERs: where jinja2 is installed
    stdin:  one JSON line per request: {"source": ..., "name": ..., "vars": {...}}
    stdout: one JSON line per answer: {"text": ...} or {"error": ...}   (the first line says {"ready": true})
"""

import sys

MAX_OUTPUT_CHARS = 4 << 20   # a template that writes more than this is runaway, not a prompt
MAX_COMPILED = 16            # compiled templates kept, by source


def main():
    memory = int(sys.argv[1])
    sys.path[:0] = sys.argv[2:]
    import datetime
    import json
    import signal

    import jinja2
    import jinja2.sandbox

    class Refused(Exception):
        """What a template did that ends its render, as the message the user sees."""

    class Sandbox(jinja2.sandbox.ImmutableSandboxedEnvironment):
        """Jinja2's immutable sandbox, where touching an unsafe attribute is an error at once (the stock
        one returns an undefined value that only fails when used, so a probe could go unnoticed)."""

        def unsafe_undefined(self, obj, attribute):
            raise jinja2.sandbox.SecurityError(f"access to attribute {attribute!r} of a "
                                               f"{type(obj).__name__!r} object is unsafe")

    def raise_exception(message):
        raise Refused(f"says: {message}")

    def tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
        return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"],
                  undefined=jinja2.Undefined, autoescape=False)
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
    env.filters["tojson"] = tojson
    compiled = {}

    def render(source, variables):
        if source not in compiled:
            try:
                template = env.from_string(source)
            except jinja2.TemplateSyntaxError as e:
                raise Refused(f"syntax error on line {e.lineno}: {e.message}") from None
            if len(compiled) >= MAX_COMPILED:
                compiled.pop(next(iter(compiled)))
            compiled[source] = template
        parts, n = [], 0
        for piece in compiled[source].generate(**variables):
            n += len(piece)
            if n > MAX_OUTPUT_CHARS:
                raise Refused(f"wrote more than {MAX_OUTPUT_CHARS} characters: refused as runaway")
            parts.append(piece)
        return "".join(parts)

    def answer(request):
        name = request["name"]
        try:
            return {"text": render(request["source"], request["vars"])}
        except Refused as e:
            return {"error": f"chat template ({name}) {e}"}
        except jinja2.sandbox.SecurityError as e:
            return {"error": f"chat template ({name}) refused: it tries to reach something the sandbox "
                             f"forbids ({e}); templates in model files are untrusted"}
        except MemoryError:
            return {"error": f"chat template ({name}) needs more than {memory >> 20} MB of memory: "
                             f"refused as runaway"}
        except Exception as e:   # TypeError, UndefinedError, RecursionError...: the template is broken
            return {"error": f"chat template ({name}) failed: {e.__class__.__name__}: {e}"}

    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the parent; it stops renders itself
    _limit_memory(memory)
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        reply = answer(json.loads(line))
        out.write(json.dumps(reply) + "\n")   # ASCII: any text, lone surrogates too, travels intact
        out.flush()


def _limit_memory(nbytes):
    """Allow this process nbytes of address space above what it has now (where the OS can say so)."""
    try:
        import os
        import resource
        with open("/proc/self/statm") as f:
            now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return   # Windows, macOS: the parent's deadline still stops a runaway template
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = min([now + nbytes] + [n for n in (soft, hard) if n != resource.RLIM_INFINITY])   # never above the parent's
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


if __name__ == "__main__":
    main()
