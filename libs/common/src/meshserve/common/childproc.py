"""Child processes that die with their parent, started safely from a threaded process.

Owns one thing: the argv that makes a child get SIGTERM when the process that started it
dies (even by SIGKILL), so no model server or Envoy outlives its supervisor holding ports.
Linux's PR_SET_PDEATHSIG must be set in the child; doing it in a `preexec_fn` runs Python
between fork and exec, which in a parent with other threads (gRPC's, a client's) can find
a lock held by a thread that does not exist in the child: the child hangs or crashes before
exec (measured: Envoy started by a test process with gRPC servers running exited with
SIGSEGV, with an empty log, in about one run in three). Instead the child is a fresh,
single-threaded interpreter (`-I -S`: nothing imported but ctypes) that sets the signal,
checks its parent is still the one that started it, and execs the program: same pid, so
signals and `wait` reach the program.

May import the standard library only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"  # PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]):\n"   # the parent died before the line above
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped so that the program gets SIGTERM when this process dies (Linux); on
    another system, `argv` unchanged."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _SHIM, str(os.getpid()), *argv]
