"""Token ids in, text out: whole UTF-8 characters, cut before a stop string."""


class TextStream:
    """Token ids in, text pieces out: whole UTF-8 characters only, cut before the first stop string.

    Text that could be the start of a stop string is held back until it is known not to be one.
    push() returns the text that is now safe to show; .stopped turns true at a stop string (whatever
    comes after is dropped); flush() returns what is held back at the end.
    """

    def __init__(self, tokenizer, stop_strings=()):
        self._dec = tokenizer.stream()
        self._stops = [s for s in stop_strings if s]
        self._held = ""
        self.stopped = False

    def push(self, token):
        if self.stopped:
            return ""
        self._held += self._dec.push(token)
        return self._release(self._stop_prefix_len())

    def flush(self, partial=True):
        """The text held back. partial=False drops an unfinished character instead of writing U+FFFD
        for it (a reply cut mid-character ends cleanly)."""
        if self.stopped:
            return ""
        tail = self._dec.flush()
        self._held += tail if partial else tail.rstrip("\ufffd")
        return self._release(0)

    def _release(self, keep):
        held = self._held
        cut = min((held.find(s) for s in self._stops if s in held), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return held[:cut]
        self._held = held[len(held) - keep:] if keep else ""
        return held[:len(held) - keep]

    def _stop_prefix_len(self):
        """Length of the longest suffix of the held text that is a proper prefix of some stop string."""
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(self._held)), best, -1):
                if self._held.endswith(s[:n]):
                    best = n
                    break
        return best


def stream_text(token_iter, tokenizer, stop_strings=()):
    """Text pieces of a token stream (TextStream), ending at the first stop string."""
    text = TextStream(tokenizer, stop_strings)
    for tok in token_iter:
        piece = text.push(tok)
        if piece:
            yield piece
        if text.stopped:
            return
    piece = text.flush()
    if piece:
        yield piece
