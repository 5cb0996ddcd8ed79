"""The proxy's admission gate (shared.proxy.admission): a burst is let through a few at a time."""

from __future__ import annotations

import threading
import time

import pytest

from shared.proxy.admission import Admission


def test_at_most_width_requests_are_in_admission_at_once() -> None:
    gate = Admission(2)
    inside = peak = 0
    lock = threading.Lock()

    def request() -> None:
        nonlocal inside, peak
        with gate.admitting():
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.02)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=request) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert peak == 2


def test_done_lets_the_next_request_in_before_the_block_ends() -> None:
    gate = Admission(1)
    entered = threading.Event()
    release = threading.Event()

    def first() -> None:
        with gate.admitting():
            gate.done()  # its upstream call starts: the gate is left
            gate.done()  # idempotent: the slot is not released twice
            release.wait(5)

    def second() -> None:
        with gate.admitting():
            entered.set()

    a = threading.Thread(target=first)
    a.start()
    time.sleep(0.05)
    b = threading.Thread(target=second)
    b.start()
    assert entered.wait(2)  # while `first` is still inside its block
    release.set()
    a.join(5)
    b.join(5)
    third = threading.Event()
    with gate.admitting():
        third.set()
    assert third.is_set()  # one slot, released once: not over-released, not leaked


def test_an_error_leaves_the_gate() -> None:
    gate = Admission(1)
    with pytest.raises(RuntimeError), gate.admitting():
        raise RuntimeError("refused")
    got_in = threading.Event()

    def next_request() -> None:
        with gate.admitting():
            got_in.set()

    t = threading.Thread(target=next_request, daemon=True)
    t.start()
    assert got_in.wait(2)


def test_width_zero_is_no_gate() -> None:
    gate = Admission(0)
    with gate.admitting(), gate.admitting():
        gate.done()
