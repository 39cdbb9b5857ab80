# Copyright (c) stackops.rollback contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Byte streams between the engine, the compressor and the disk: joined into chunks worth a
hand-over, and produced in a thread of their own so that hashing overlaps the copy.

Private to this collection (the leading underscore): modules import it, users do not.
"""

from __future__ import annotations

import contextlib
import queue
import threading

CHUNK = 1024 * 1024


def coalesce(pieces, size=CHUNK):
    """Join small pieces (tar headers, padding, small files) into chunks of about size bytes;
    a piece of size bytes or more goes on as it is (never copied).

    Every piece handed over costs a call (an HTTP chunk of an upload, a pipe write): one by
    one, the headers and padding of 20,000 small files cost more than their contents.
    """
    batch, length = [], 0
    for piece in pieces:
        if len(piece) >= size:
            if batch:
                yield b"".join(batch)
                batch, length = [], 0
            yield piece
            continue
        batch.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(batch)
            batch, length = [], 0
    if batch:
        yield b"".join(batch)


_DONE = object()


def prefetched(chunks, depth=8):
    """Iterate `chunks` in a thread of its own, at most `depth` chunks ahead, so that the work
    that makes them (decompressing, parsing, hashing: all of it lets go of the GIL) overlaps
    the work that takes them (a socket send). An exception of the source is raised here, where
    the consumer reads; a consumer that stops early stops the source too."""
    pending = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                pending.put((chunk, None))
            pending.put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer
            pending.put((_DONE, exc))

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        while True:
            chunk, failure = pending.get()
            if failure is not None:
                raise failure
            if chunk is _DONE:
                return
            yield chunk
    finally:
        stop.set()
        while producer.is_alive():  # let a producer blocked on a full queue see the stop
            with contextlib.suppress(queue.Empty):
                pending.get(timeout=0.1)
        producer.join()
