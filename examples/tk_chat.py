"""A small desktop chat on minigpt: a Tk window with streamed replies and a Stop button.

    python examples/tk_chat.py [-m MODEL] [--system TEXT]

Enter sends, Shift+Enter starts a new line, Escape stops the reply, Ctrl+Q quits.

Tk is not thread-safe: only the thread running the main loop may touch a widget. So the slow work
(loading the model, writing a reply) runs on worker threads that never touch the window, nor even the
App: they post the names of the App methods to call to a queue, and the main loop calls them every
POLL_MS (root.after). The one call that goes the other way is chat.cancel(), which any thread may make.
"""

import argparse
import os
import queue
import threading
import tkinter as tk
from tkinter import font, scrolledtext, ttk

import minigpt

DEFAULT_MODEL = "smollm2-135m-instruct"
POLL_MS = 30   # how often the main loop takes the workers' posts: often enough for text to flow smoothly


class App:
    """The chat window, built in `root`. model: a .mgpt path or a known model name, loaded on a worker
    thread. system and chat_options (temperature, max_tokens, seed, ...) go to Model.chat()."""

    def __init__(self, root, model=DEFAULT_MODEL, system=None, **chat_options):
        self.root = root
        self.model_name = os.path.basename(model)
        self.model = self.chat = None
        self.posted = queue.Queue()         # (method name, args) from the workers, for the main loop to call
        self._build()
        self._set_state("loading")   # then 'idle' <-> 'replying', or 'failed' if the model won't load
        self.status.set(f"loading {self.model_name}…")
        threading.Thread(target=load_worker, args=(self.posted.put, model, system, chat_options), daemon=True).start()
        self._poll()

    # --- the window

    def _build(self):
        root = self.root
        root.title(f"minigpt chat: {self.model_name}")
        root.geometry("720x560")
        # the platform's text font, a bit larger; Tk borrows the glyphs it lacks (Chinese ones, say) from
        # other installed fonts. Kept on self: a Font object deletes its Tk font when garbage-collected.
        self.font = text_font = font.nametofont("TkTextFont", root).copy()
        text_font.configure(size=11)
        self.bold = text_font.copy()
        self.bold.configure(weight="bold")

        # packed bottom-up, so that a small window squeezes the transcript, not the input or the status line
        self.status = tk.StringVar(root)
        ttk.Label(root, textvariable=self.status, anchor="w", padding=(8, 0, 8, 4)).pack(side="bottom", fill="x")

        bar = ttk.Frame(root)
        bar.pack(side="bottom", fill="x", padx=6, pady=6)
        buttons = ttk.Frame(bar)
        buttons.pack(side="right", padx=(6, 0))
        self.send_button = ttk.Button(buttons, text="Send", command=self.send)
        self.stop_button = ttk.Button(buttons, text="Stop", command=self.stop)
        self.new_button = ttk.Button(buttons, text="New chat", command=self.new_chat)
        for b in (self.send_button, self.stop_button, self.new_button):
            b.pack(fill="x")
        self.entry = tk.Text(bar, width=20, height=3, wrap="word", font=text_font, undo=True)
        self.entry.pack(side="left", fill="both", expand=True)   # after the buttons: it takes what they leave

        self.transcript = scrolledtext.ScrolledText(root, wrap="word", state="disabled", font=text_font,
                                                    padx=8, pady=8)
        self.transcript.tag_configure("name", font=self.bold)
        self.transcript.tag_configure("note", foreground="gray50")
        self.transcript.pack(fill="both", expand=True, padx=6, pady=(6, 0))

        self.entry.bind("<Return>", self.send)
        self.entry.bind("<Shift-Return>", lambda e: None)   # not a send: the Text's own binding adds a newline
        root.bind("<Escape>", self.stop)
        root.bind("<Control-q>", self.quit)
        root.protocol("WM_DELETE_WINDOW", self.quit)
        self.entry.focus_set()

    def _set_state(self, state):
        """Enable the buttons that make sense in `state`."""
        self.state = state
        enabled = {self.send_button: state == "idle", self.new_button: state == "idle",
                   self.stop_button: state == "replying"}
        for button, on in enabled.items():
            button.configure(state="normal" if on else "disabled")

    def _write(self, text, *tags):
        """Append to the transcript (read-only for the user: writable only during the insert)."""
        t = self.transcript
        following = t.yview()[1] >= 0.999   # keep the end in view, unless the user scrolled up to read
        t.configure(state="normal")
        t.insert("end", text, tags)
        t.configure(state="disabled")
        if following:
            t.see("end")

    def _show_status(self):
        s = f"{self.model_name}  ·  context {self.chat.n_past}/{self.chat.n_ctx} tokens"
        last = self.chat.last
        if last.reply_tokens:
            s += f"  ·  last reply {last.reply_tokens} tokens at {last.decode_tps:.1f} tok/s"
        self.status.set(s)

    # --- what the user does (main loop)

    def send(self, event=None):
        text = self.entry.get("1.0", "end-1c").strip()
        if self.state == "idle" and text:
            self.entry.delete("1.0", "end")
            self._write("You: ", "name")
            self._write(text + "\n")
            self._write("Assistant: ", "name")
            self._set_state("replying")
            self.status.set("reading the prompt…")
            # made here, consumed on the worker: a Stop from this moment on counts
            post = self.posted.put
            pieces = self.chat.send(text, on_prefill_progress=lambda done, total: post(("_reading", (done, total))))
            threading.Thread(target=reply_worker, args=(post, pieces), daemon=True).start()
        return "break"   # Enter has sent: it must not also insert a newline

    def stop(self, event=None):
        if self.state == "replying":
            self.chat.cancel()
            self.status.set("stopping…")

    def new_chat(self):
        if self.state == "idle":
            self.chat.reset()   # keeps the system prompt
            self.transcript.configure(state="normal")
            self.transcript.delete("1.0", "end")
            self.transcript.configure(state="disabled")
            self._show_status()

    def quit(self, event=None):
        self.root.after_cancel(self._polling)
        if self.chat is not None:
            self.chat.cancel()   # the worker is a daemon thread: this just lets it end cleanly
        self.root.destroy()

    # --- the workers and their posts

    def _poll(self):
        self._polling = self.root.after(POLL_MS, self._poll)   # first: a call that fails must not end the polling
        while True:
            try:
                name, args = self.posted.get_nowait()
            except queue.Empty:
                break
            getattr(self, name)(*args)

    def _loaded(self, model, chat):
        self.model, self.chat = model, chat
        self._set_state("idle")
        self._show_status()

    def _failed(self, message):
        self._set_state("failed")
        self.status.set(message)

    def _reading(self, done, total):
        self.status.set("replying…" if done == total else f"reading the prompt: {done}/{total} tokens…")

    def _set_status(self, text):
        self.status.set(text)

    def _replied(self):
        last = self.chat.last
        if last.stop == "cancelled" and not last.kept:   # stopped while reading the message
            self._write("[stopped: the message was not read, the model will not see it]", "note")
        elif last.stop == "cancelled":
            self._write(" [stopped]", "note")
        self._write("\n\n")
        self._set_state("idle")
        self._show_status()


# --- the workers: they see the queue's put, never a widget

def load_worker(post, model, system, chat_options):
    """Load the model (the first run of a known name downloads and converts it), start a chat."""
    done, name = {}, os.path.basename(model)

    def progress(n, total, stage):   # stage: downloading, verifying or converting
        done[stage] = done.get(stage, 0) + n
        post(("_set_status", (f"{stage} {name}: {100 * done[stage] // max(total, 1)}%",)))

    try:
        m = minigpt.load(model, log=lambda msg: post(("_set_status", (msg,))), progress=progress)
        chat = m.chat(system=system, **chat_options)
    except Exception as e:   # shown in the window: a worker's exception would vanish with its thread
        post(("_failed", (f"could not load {model}: {e}",)))
        return
    post(("_loaded", (m, chat)))


def reply_worker(post, pieces):
    """Stream a reply into the transcript, piece by piece."""
    try:
        for piece in pieces:
            post(("_write", (piece,)))
    except Exception as e:   # minigpt.MinigptError (e.g. a message too long for the context), or a bug
        post(("_write", (f"[{e}]", "note")))
    post(("_replied", ()))


def main():
    p = argparse.ArgumentParser(description="A desktop chat window on a minigpt model.")
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help="a .mgpt file or a known model name")
    p.add_argument("--system", help="the system prompt (default: the model's own, if any)")
    args = p.parse_args()
    root = tk.Tk()
    App(root, args.model, args.system)
    root.mainloop()


if __name__ == "__main__":
    main()
