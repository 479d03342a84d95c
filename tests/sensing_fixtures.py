"""Shared set-up of the sensing tests: a base holding the sample city's IoT devices (loaded with
the ordinary loader from data_samples, as `cim samples load` does)."""
from __future__ import annotations

import json

from cim.bootstrap import initialise
from cim.database import engine_for
from ingest.run import IngestOptions, ingest_files
from tests.conftest import PROJECT, create_database
from tests.sample_city import scalar  # noqa: F401 (re-exported for the sensing tests)

SAMPLES = PROJECT / "data_samples"


def load_sample_layers(url: str, *layers: str) -> None:
    """Load the manifest entries of ``layers`` (in manifest order) into the base at ``url``."""
    for entry in json.loads((SAMPLES / "manifest.json").read_text(encoding="utf-8")):
        if entry["layer"] not in layers:
            continue
        options = IngestOptions(crs=entry.get("crs"), encoding=entry.get("encoding"),
                                layer_name=entry.get("layer_name"), x=entry.get("x"), y=entry.get("y"),
                                z=entry.get("z"), wkt=entry.get("wkt"), mapping=entry.get("map") or {},
                                operator="test")
        ingest_files(entry["layer"], [SAMPLES / entry["path"]], options, engine_for(url))


def iot_devices_base(server_url: str) -> str:
    """A new initialised base holding the sample city's IoT devices; returns its URL."""
    url = create_database(server_url)
    initialise(engine_for(url))
    load_sample_layers(url, "iot-devices")
    return url


# --- a real MQTT broker: Debian's mosquitto, on a free loopback port with its own config ------------

import getpass  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, every: float = 0.1):  # noqa: ANN001, ANN201
    """Poll ``condition`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Mosquitto:
    """One broker process; persistence on, so a restart keeps sessions and queued messages."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                               f"persistence_location {directory}/\nlog_dest file {directory}/mosquitto.log\n"
                               # started as root, mosquitto would drop to user 'mosquitto', which cannot
                               # write the persistence file into this test's directory
                               f"user {getpass.getuser()}\n",
                               encoding="utf-8")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_until(lambda: self._accepts() or self.process.poll() is not None, 15, "mosquitto to listen")
        assert self.process.poll() is None, (self.directory / "mosquitto.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.process.wait(timeout=15)
        self.process = None
