"""Real `sgdcli` command processes without the interpreter's start-up: a server process loads NumPy as the
command line would for a config (``before_numpy.load_numpy_for``) and imports the command line, then forks
one child per command, each running ``sgdcli.cli.app.main`` as ``python -m sgdcli`` would. A test can
SIGKILL a child at any moment, as it would a process it started itself (tests/test_faults.py: 32 kills
took ~30 s with a fresh interpreter each, ~0.8 s of it imports).

Protocol, one JSON line each way: ``["run", cwd, args...]`` -> ``{"pid": N}``; ``["wait", N]`` -> ``{"status":
S}``, S as Popen's returncode (a signal's number negated); ``["stop"]`` ends the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_SERVER = r"""
import json, os, sys
from pathlib import Path
from sgdcli.cli import before_numpy
from sgdcli.config.loading import load_config
before_numpy.load_numpy_for(load_config(Path(sys.argv[1])))
import sgdcli.api, sgdcli.cli.app
from matplotlib import pyplot  # (imported by the first plot a run draws)

def serve(line):
    request = json.loads(line)
    if request[0] == "wait":
        _, status = os.waitpid(request[1], 0)
        return {"status": os.waitstatus_to_exitcode(status)}
    cwd, args = request[1], request[2:]
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            quiet = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(quiet, fd)
            os.chdir(cwd)
            sys.argv = ["sgdcli", *args]
            sgdcli.cli.app.main()
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            os._exit(code)
    return {"pid": pid}

for line in sys.stdin:
    if line.strip() == '["stop"]':
        break
    print(json.dumps(serve(line)), flush=True)
"""


class ForkServer:
    """Start with the config whose model the commands will run (its kernels: ``engine/spin.py``)."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _SERVER, str(config)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def _ask(self, request: list) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the fork server ended"
        return json.loads(line)

    def run(self, *args: str | Path, cwd: Path) -> int:
        """Start `sgdcli *args` in `cwd`; its pid."""
        return self._ask(["run", str(cwd), *map(str, args)])["pid"]

    def wait(self, pid: int) -> int:
        """The command's exit status, as Popen.returncode gives it (-9: SIGKILL)."""
        return self._ask(["wait", pid])["status"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write('["stop"]\n')
            self.process.stdin.close()
            self.process.wait(timeout=60)
        self.process.stdout.close()

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

