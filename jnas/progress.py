"""A dependency-free progress line for long jobs, and console messages that respect quiet mode.

On a terminal the line redraws in place (``\\r``); in a log file (not a tty) it prints a full line at
most every ``log_every`` seconds. ``quiet=True`` prints nothing but ``message``s marked important.

  bar = Progress(total=epochs * steps, desc="search", seeds=4, quiet=False)
  bar.update(done, epoch=e, step=i, images=64 * 4, loss=0.9)
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress", "format_seconds"]


def format_seconds(s: float) -> str:
  s = int(max(s, 0))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
  """Progress of ``total`` steps; ``images`` counts throughput (images/s over all seeds).

  Args:
    total: number of steps of the whole run.
    desc: label at the start of the line.
    quiet: only print messages with ``always=True``.
    stream: where to write (stderr by default, so stdout stays clean for tables).
    log_every: seconds between lines when the stream is not a terminal.
  """

  def __init__(self, total: int, desc: str = "", *, quiet: bool = False, stream=None, log_every: float = 30.0,
               initial: int = 0):
    self.total, self.desc, self.quiet = max(int(total), 1), desc, quiet
    self.stream = sys.stderr if stream is None else stream
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.log_every = log_every
    self.done = initial
    self._start_done = initial
    self._t0 = time.perf_counter()
    self._last_print = -float("inf")
    self._images = 0
    self._t_images = self._t0
    self._rate = None
    self._open_line = False
    self._excluded = 0.0
    self._excluded_steps = 0

  def exclude(self, seconds: float, steps: int = 1) -> None:
    """Leaves ``seconds`` (and ``steps``) out of the ETA: a step that compiled a program."""
    self._excluded += seconds
    self._excluded_steps += steps

  def update(self, done: int, *, images: int = 0, force: bool = False, **fields) -> None:
    """Records ``done`` completed steps and ``images`` processed since the last call; ``fields``
    (epoch=..., loss=...) are shown as ``name value``."""
    self.done = done
    self._images += images
    now = time.perf_counter()
    if now - self._t_images >= 1.0 and self._images:
      self._rate = self._images / (now - self._t_images)
      self._images, self._t_images = 0, now
    if self.quiet:
      return
    if not force and (now - self._last_print) < (0.2 if self.tty else self.log_every):
      return
    self._last_print = now
    elapsed = now - self._t0
    steps = done - self._start_done - self._excluded_steps
    eta = (elapsed - self._excluded) / steps * (self.total - done) if steps > 0 else float("nan")
    parts = [f"{self.desc} {done}/{self.total} ({100 * done / self.total:.0f}%)"]
    for k, v in fields.items():
      parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    if self._rate:
      parts.append(f"{self._rate:.0f} img/s")
    parts.append(f"{format_seconds(elapsed)} elapsed" + ("" if eta != eta else f", eta {format_seconds(eta)}"))
    line = " | ".join(parts)
    if self.tty:
      self.stream.write("\r" + line[:200].ljust(120))
      self._open_line = True
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def message(self, text: str, *, always: bool = False) -> None:
    """Prints ``text`` on its own line (``always`` prints it in quiet mode too)."""
    if self.quiet and not always:
      return
    if self._open_line:
      self.stream.write("\n")
      self._open_line = False
    self.stream.write(text + "\n")
    self.stream.flush()

  def close(self) -> None:
    if self._open_line:
      self.stream.write("\n")
      self.stream.flush()
      self._open_line = False
