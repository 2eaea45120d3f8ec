"""tools/fio.py without fio: its JSON report parsed (IOPS, bandwidth, errors), command lines, and the runs of a
point kept by round (failures apart), through JSON and back."""

from __future__ import annotations

import json
from pathlib import Path

from tools import fio

# Trimmed from real fio 3.33 --output-format=json output (only the keys the benchmarks read, plus neighbours).
FIO_OK = """{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "4k-randread-psync-qd1-d0",
      "error" : 0,
      "read" : {
        "io_bytes" : 201326592,
        "bw_bytes" : 67108864,
        "iops" : 16384.5,
        "runtime" : 3000,
        "bw" : 65536,
        "total_ios" : 49152
      },
      "write" : {"io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "bw" : 0}
    }
  ]
}
"""

# What fio prints when the pyfuse3 example dies under it: an error line, then the JSON.
FIO_CRASH_STDOUT = ("fio: pid=4889, err=103/file:io_u.c:1876, func=io_u error, "
                    "error=Software caused connection abort\n"
                    + FIO_OK.replace('"error" : 0', '"error" : 103').replace("16384.5", "0.0"))
FIO_CRASH_STDERR = ("fio: io_u error on file /mnt/bench-64M.dat: Software caused connection abort: "
                    "read offset=4046848, buflen=4096\n")


def fio_json(iops: float, bw_kib: int | None = None) -> str:
    """A minimal report with the given numbers; without bw_bytes when bw_kib is given (older fio)."""
    read: dict[str, float] = {"iops": iops}
    if bw_kib is None:
        read["bw_bytes"] = iops * 4096
    else:
        read["bw"] = bw_kib
    return json.dumps({"jobs": [{"jobname": "x", "error": 0, "read": read}]})


def point(*iops: float) -> fio.Point:
    """A point with one run per value, round by round."""
    p = fio.Point()
    for n, value in enumerate(iops):
        p.add(n, fio.parse_fio_json(fio_json(value)))
    return p


def crashed_point() -> fio.Point:
    p = fio.Point()
    p.add(0, fio.parse_fio_json(FIO_CRASH_STDOUT, FIO_CRASH_STDERR, 1))
    return p


def test_parse_ok() -> None:
    r = fio.parse_fio_json(FIO_OK)
    assert r.error is None
    assert r.iops == 16384.5
    assert r.bw == 67108864


def test_parse_falls_back_to_kib_bandwidth() -> None:
    r = fio.parse_fio_json(fio_json(100.0, bw_kib=400))
    assert r.bw == 400 * 1024


def test_parse_crash_with_leading_error_line() -> None:
    r = fio.parse_fio_json(FIO_CRASH_STDOUT, FIO_CRASH_STDERR, returncode=1)
    assert r.error is not None
    assert "103" in r.error
    assert "connection abort" in r.error


def test_parse_no_json() -> None:
    r = fio.parse_fio_json("", "fio: failed to open /nope\n", returncode=1)
    assert r.error == "fio: failed to open /nope"
    assert fio.parse_fio_json("garbage {", "", 2).error == "fio exited 2, no JSON"


def test_nonzero_exit_without_job_error_is_a_failure() -> None:
    assert fio.parse_fio_json(FIO_OK, "", returncode=1).error == "fio exited 1"


# A 70/30 randrw run: reads and writes are both counted.
FIO_RANDRW = json.dumps({"jobs": [{"jobname": "4k-randrw-psync-qd1-d1", "error": 0,
                                   "read": {"iops": 7000.0, "bw_bytes": 7000 * 4096},
                                   "write": {"iops": 3000.0, "bw_bytes": 3000 * 4096}}]})


def test_parse_counts_reads_and_writes() -> None:
    r = fio.parse_fio_json(FIO_RANDRW)
    assert r.error is None
    assert (r.iops, r.write_iops, r.bw) == (10000.0, 3000.0, 10000 * 4096)
    write_only = json.dumps({"jobs": [{"error": 0, "read": {"iops": 0, "bw": 0}, "write": {"iops": 5.0, "bw": 20}}]})
    assert fio.parse_fio_json(write_only).iops == 5.0
    assert fio.parse_fio_json(write_only).bw == 20 * 1024


def test_a_crashed_run_fails_its_point() -> None:
    crashed = crashed_point()
    assert crashed.failed and not crashed.by_round
    assert point(100, 200).iops() == [100, 200]


def test_command_lines() -> None:
    job = fio.Job(fio.WORKLOAD["4k-randread"], "libaio", 16, 1)
    cmd = fio.fio_command(job, Path("/m/f"), 3, extra=["--percentile_list=50"])
    assert cmd == ["fio", "--name=4k-randread-libaio-qd16-d1", "--filename=/m/f", "--size=64M", "--rw=randread",
                   "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--direct=1", "--runtime=3", "--time_based",
                   "--invalidate=0", "--percentile_list=50", "--output-format=json"]
    assert fio.fio_runtime(0.5) == "500ms" and fio.fio_runtime(2.0) == "2"


def test_matrix_survives_json() -> None:
    m = fio.Matrix()
    m.point("a", "j").add(0, fio.FioResult(10.0, 40960.0, foreign_cpu=0.1))
    m.point("b", "j").add(0, fio.FioResult(error="mount died"))
    m.crashes[("b", "j")] = "OSError: boom"
    m.note_command(["fio", "--name=j"], "a")
    m.note_command(["fio", "--name=j"], "b")
    back = fio.matrix_from_json(json.loads(json.dumps(fio.matrix_to_json(m))))
    assert back == m
    assert back.commands == {"fio --name=j": ["a", "b"]} and back.runs() == [m.points[("a", "j")].by_round[0]]
