"""Servo trim: jog one joint at a time from the keyboard, save centre, direction and limits.

The key handling is a pure state machine, :class:`TrimSession`: ``handle_key(key)`` returns a
list of effects (:class:`Jog`, :class:`Save`, :class:`Quit`, :class:`Message`) and never does
I/O, so tests drive it without a terminal. :func:`apply_effects` carries the effects out
(jogs through ``Safety.jog``, saves through ``calibration.toml_edit``); :func:`run_terminal`
is the thin raw-terminal front end (cbreak mode: Ctrl-C still raises ``KeyboardInterrupt``, and
the board session's shutdown then sends the safe pose).

Only the joint being trimmed moves: a jog sends that one channel (the first jog of a joint
slowly, from wherever it is), and nothing moves every joint at once, so a robot whose horns
were fitted anywhere is never driven into its stops by the template's centres and directions.

Limits while jogging: a joint never goes beyond its current ``min_us..max_us``. ``l``/``h``
move a limit inwards to the current pulse. Widening needs ``--allow-widen``: then ``L``/``H``
push the limit outwards by the step size, at most :data:`WIDEN_MAX_US` per keypress and never
beyond 500..2500 us, and move the joint there.
"""

from __future__ import annotations

import os
import select
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, TextIO

from calibration import Calibration
from calibration.description import PULSE_MAX_US, PULSE_MIN_US

#: Step sizes ``[``/``]`` cycle through (us).
STEP_SIZES_US = (1, 2, 5, 10, 20, 50)
#: The most a limit may be widened per keypress (us), even with a larger step.
WIDEN_MAX_US = 50

HELP = (
    "keys: n/p next/prev joint | +/- or up/down: step | [ ] step size | z go to centre | "
    "c set centre here | d flip direction | l/h set min/max limit here | L/H widen min/max "
    "(--allow-widen) | r revert joint | s save | q quit | ? help"
)


@dataclass(frozen=True)
class Jog:
    channel: int
    pulse_us: int
    min_us: int
    max_us: int


@dataclass(frozen=True)
class Save:
    pass


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class Message:
    text: str


Effect = Jog | Save | Quit | Message


@dataclass
class JointTrim:
    name: str
    channel: int
    neutral_us: int
    direction: int
    min_us: int
    max_us: int
    pulse_us: int
    saved: tuple[int, int, int, int] = (0, 0, 0, 0)  # neutral, direction, min, max as last saved

    @property
    def values(self) -> tuple[int, int, int, int]:
        return (self.neutral_us, self.direction, self.min_us, self.max_us)

    @property
    def dirty(self) -> bool:
        return self.values != self.saved


@dataclass
class TrimSession:
    """The trim state machine; see the module docstring for the keys."""

    joints: list[JointTrim]
    step_us: int = 10
    allow_widen: bool = False
    index: int = 0
    quit_armed: bool = False

    @classmethod
    def from_calibration(cls, cal: Calibration, *, step_us: int = 10, allow_widen: bool = False,
                         start_joint: str | None = None) -> "TrimSession":
        joints = []
        for j in cal.joints:
            values = (int(round(j.neutral_us)), j.direction, int(round(j.min_us)), int(round(j.max_us)))
            # Jogging starts at the centre, where `calibrate center` held the servo while its horn
            # went on: a joint's first move is one step, whatever the template's direction says.
            pulse = int(round(min(max(j.neutral_us, j.min_us), j.max_us)))
            joints.append(JointTrim(j.name, j.channel, *values, pulse_us=pulse, saved=values))
        if step_us not in STEP_SIZES_US:
            raise ValueError(f"step must be one of {STEP_SIZES_US}, got {step_us}")
        session = cls(joints, step_us=step_us, allow_widen=allow_widen)
        if start_joint is not None:
            session.index = [j.name for j in joints].index(start_joint)
        return session

    # ------------------------------------------------------------------ state

    @property
    def joint(self) -> JointTrim:
        return self.joints[self.index]

    @property
    def dirty(self) -> bool:
        return any(j.dirty for j in self.joints)

    def status_line(self) -> str:
        j = self.joint
        mark = "*" if j.dirty else " "
        return (f"{mark}[{self.index + 1:2d}/{len(self.joints)}] {j.name:16s} ch {j.channel:2d}  "
                f"pulse {j.pulse_us:4d} us  centre {j.neutral_us:4d}  dir {j.direction:+d}  "
                f"limits {j.min_us:4d}..{j.max_us:4d}  step {self.step_us:2d} us")

    def mark_saved(self) -> None:
        for j in self.joints:
            j.saved = j.values

    # ------------------------------------------------------------------ keys

    def handle_key(self, key: str) -> list[Effect]:
        """Effects of one key; ``key`` is a character or ``up``/``down``/``left``/``right``/``tab``."""
        if key not in ("q",):
            self.quit_armed = False
        j = self.joint
        if key in ("n", "tab", "right"):
            self.index = (self.index + 1) % len(self.joints)
            return []
        if key in ("p", "left"):
            self.index = (self.index - 1) % len(self.joints)
            return []
        if key in ("+", "=", "up"):
            return self._move_to(j.pulse_us + self.step_us)
        if key in ("-", "_", "down"):
            return self._move_to(j.pulse_us - self.step_us)
        if key == "[":
            self.step_us = STEP_SIZES_US[max(0, STEP_SIZES_US.index(self.step_us) - 1)]
            return []
        if key == "]":
            self.step_us = STEP_SIZES_US[min(len(STEP_SIZES_US) - 1, STEP_SIZES_US.index(self.step_us) + 1)]
            return []
        if key == "z":
            return self._move_to(j.neutral_us)
        if key == "c":
            j.neutral_us = j.pulse_us
            return [Message(f"{j.name}: centre set to {j.neutral_us} us")]
        if key == "d":
            j.direction = -j.direction
            return [Message(f"{j.name}: direction now {j.direction:+d}")]
        if key == "l":
            if j.pulse_us > j.neutral_us:
                return [Message(f"{j.name}: min limit must not be above the centre ({j.neutral_us} us)")]
            j.min_us = j.pulse_us
            return [Message(f"{j.name}: min limit set to {j.min_us} us")]
        if key == "h":
            if j.pulse_us < j.neutral_us:
                return [Message(f"{j.name}: max limit must not be below the centre ({j.neutral_us} us)")]
            j.max_us = j.pulse_us
            return [Message(f"{j.name}: max limit set to {j.max_us} us")]
        if key in ("L", "H"):
            return self._widen(key == "H")
        if key == "r":
            j.neutral_us, j.direction, j.min_us, j.max_us = j.saved
            effects: list[Effect] = [Message(f"{j.name}: reverted to the saved values")]
            return effects + self._move_to(j.pulse_us)
        if key == "s":
            return [Save()]
        if key == "q":
            if self.dirty and not self.quit_armed:
                self.quit_armed = True
                return [Message("unsaved changes: press q again to quit without saving, s to save")]
            return [Quit()]
        if key == "ctrl-c":
            return [Quit()]
        if key == "?":
            return [Message(HELP)]
        return [Message(f"unknown key {key!r} (? for help)")]

    def _move_to(self, pulse_us: int) -> list[Effect]:
        j = self.joint
        clamped = min(max(pulse_us, j.min_us), j.max_us)
        effects: list[Effect] = []
        if clamped != pulse_us:
            which = "max" if pulse_us > j.max_us else "min"
            hint = f" ({which[0].upper()} widens)" if self.allow_widen else " (widen with --allow-widen)"
            effects.append(Message(f"{j.name}: at the {which} limit {clamped} us{hint}"))
        if clamped == j.pulse_us and effects:
            return effects
        j.pulse_us = clamped
        return effects + [Jog(j.channel, clamped, j.min_us, j.max_us)]

    def _widen(self, upper: bool) -> list[Effect]:
        j = self.joint
        if not self.allow_widen:
            return [Message("widening a limit needs --allow-widen")]
        amount = min(self.step_us, WIDEN_MAX_US)
        if upper:
            new = min(j.max_us + amount, PULSE_MAX_US)
            if new == j.max_us:
                return [Message(f"{j.name}: max limit already at the hard cap {PULSE_MAX_US} us")]
            j.max_us = new
        else:
            new = max(j.min_us - amount, PULSE_MIN_US)
            if new == j.min_us:
                return [Message(f"{j.name}: min limit already at the hard cap {PULSE_MIN_US} us")]
            j.min_us = new
        j.pulse_us = new
        return [Message(f"{j.name}: {'max' if upper else 'min'} limit widened to {new} us"),
                Jog(j.channel, new, j.min_us, j.max_us)]


# ---------------------------------------------------------------------- carrying effects out


def save_session(session: TrimSession, path: str, *, stamp: str | None = None) -> str:
    """Write the changed joints into the calibration at ``path`` (backup kept); returns a message."""
    from calibration.toml_edit import read_document, save_document, with_joint

    doc, text = read_document(path)
    changed = [j for j in session.joints if j.dirty]
    if not changed:
        return "nothing changed: not saved"
    for j in changed:
        doc = with_joint(doc, j.name, neutral_us=j.neutral_us, direction=j.direction, min_us=j.min_us,
                         max_us=j.max_us)
    result = save_document(path, doc, original_text=text, stamp=stamp)
    session.mark_saved()
    backup = f" (previous file kept as {result.backup_path})" if result.backup_path else ""
    return f"saved {', '.join(j.name for j in changed)} to {path}{backup}"


def apply_effects(effects: Iterable[Effect], session: TrimSession, safety, path: str,
                  say: Callable[[str], None], dry_run: bool = False) -> bool:
    """Jog through ``safety.jog``, save to ``path`` (never under ``dry_run``), print messages;
    True when the session ends."""
    from calibration import CalibrationError

    for effect in effects:
        if isinstance(effect, Jog):
            safety.jog({effect.channel: effect.pulse_us}, limits_us={effect.channel: (effect.min_us, effect.max_us)},
                       alone=True)  # the joint being trimmed and nothing else
        elif isinstance(effect, Save) and dry_run:
            changed = ", ".join(j.name for j in session.joints if j.dirty) or "nothing changed"
            say(f"dry run: not saved ({changed}); {path} is unchanged")
        elif isinstance(effect, Save):
            try:
                say(save_session(session, path))
            except CalibrationError as exc:
                say(f"NOT saved: {exc}")
        elif isinstance(effect, Message):
            say(effect.text)
        elif isinstance(effect, Quit):
            return True
    return False


def run_keys(session: TrimSession, safety, path: str, keys: Iterable[str],
             say: Callable[[str], None] = lambda text: None, dry_run: bool = False) -> None:
    """Feed a sequence of keys through the session (scripted use and tests)."""
    for key in keys:
        if apply_effects(session.handle_key(key), session, safety, path, say, dry_run):
            return


# ---------------------------------------------------------------------- terminal front end

_ESCAPES = {"\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left",
            "\x1bOA": "up", "\x1bOB": "down", "\x1bOC": "right", "\x1bOD": "left"}


def split_keys(data: str) -> list[str]:
    """Keys in one read: arrow escape sequences as names, tab as ``tab``, other characters as-is."""
    keys = []
    i = 0
    while i < len(data):
        for seq, name in _ESCAPES.items():
            if data.startswith(seq, i):
                keys.append(name)
                i += len(seq)
                break
        else:
            ch = data[i]
            i += 1
            if ch == "\t":
                keys.append("tab")
            elif ch == "\x03":
                keys.append("ctrl-c")
            elif ch not in " \r\n\x1b":
                keys.append(ch)
    return keys


def run_terminal(session: TrimSession, safety, path: str, stdin: TextIO = sys.stdin,
                 out: TextIO = sys.stdout, dry_run: bool = False) -> None:
    """Interactive loop on a terminal (cbreak mode); from a pipe, read keys until end of input."""
    fd = stdin.fileno()
    interactive = os.isatty(fd)

    def say(text: str) -> None:
        out.write(("\r\x1b[K" if interactive else "") + text + "\n")
        out.flush()

    def show() -> None:
        out.write("\r\x1b[K" + session.status_line())
        out.flush()

    say(HELP)
    if not interactive:  # scripted: keys from a pipe or file
        for key in split_keys(stdin.read()):
            if apply_effects(session.handle_key(key), session, safety, path, say, dry_run):
                break
            say(session.status_line())
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # keys without Enter; Ctrl-C still interrupts (safe pose on the way out)
        show()
        while True:
            if not select.select([fd], [], [], 0.5)[0]:
                continue
            data = os.read(fd, 64).decode("utf-8", "replace")
            if not data:
                break
            done = False
            for key in split_keys(data):
                if apply_effects(session.handle_key(key), session, safety, path, say, dry_run):
                    done = True
                    break
            if done:
                break
            show()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        out.write("\n")
        out.flush()
