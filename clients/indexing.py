"""`nestrank index CORPUS --model NAME`: a corpus of {"id": ..., "text": ...} rows (JSONL; Parquet when pyarrow is
installed) → the served reranker, which encodes each passage once → its passage store, kept for good under your
ids. Afterwards `rerank(query, passages=["doc-17", ...])` works from every replica that shares the store.

- Resumable and idempotent: the server skips documents whose id already names the same text stored at this ratio,
  so a rerun after a kill finishes the job and writes nothing twice.
- `--shard i/n`: rows go to shard hash(id) mod n, so N workers (a Kubernetes Indexed Job, or any engine) share a
  corpus, and both rows of a repeated id land in the same shard.
- Bad rows (no id or text, empty text, not strings, invalid Unicode, an id seen before with other text) go to the
  rejects file with their line number and reason; every good row is still indexed. Exit code: 0 every row is
  stored, 1 some rows were rejected, 2 the run could not finish (rerun it to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from nestrank.clients.rerank import AsyncRerankClient
from nestrank.clients.transport import DEFAULT_URL, RetryPolicy
from nestrank.protocol.errors import NestrankError

MAX_ID_CHARS = 512  # the server's limit too (serving/pipeline/rerank_service.py)
STATES_NOTE = """\
The server decides how passage states are stored: float16, or int8 with `nestrank serve --passage-states int8`
(or a store URL with ?states=int8), at half the bytes. The two are kept apart, so index through a server set up
as the ones that will rerank by these ids."""


@dataclass
class Summary:
    rows: int = 0  # rows of this shard read from the corpus
    indexed: int = 0  # rows that wrote something now: their states (encoded now), or their id
    skipped: int = 0  # stored already (a rerun, or the same text under another id)
    duplicates: int = 0  # the same id again with the same text
    rejected: int = 0
    tokens: int = 0  # tokens encoded now
    bytes_stored: int = 0
    seconds: float = 0.0
    rejects_file: str | None = None
    failure: str | None = field(default=None)

    @property
    def passages_per_s(self) -> float:
        return (self.indexed + self.skipped) / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (f"{self.rows} rows: {self.indexed} indexed, {self.skipped} already stored (skipped), "
                f"{self.duplicates} repeated, {self.rejected} rejected; {self.tokens} tokens, "
                f"{self.bytes_stored / 2**20:.1f} MiB stored in {self.seconds:.1f} s "
                f"({self.passages_per_s:.1f} passages/s)")  # fmt: skip


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return index, count


def shard_of(passage_id: str, count: int) -> int:
    """Stable across runs and machines (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(passage_id.encode("utf-8", "surrogatepass")).digest()[:8], "big") % count


def read_rows(path: str, id_field: str, text_field: str) -> Iterator[tuple[int, object]]:
    """(line number, row) for each row; a line that is not JSON comes as its error text."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit("nestrank index: reading Parquet needs pyarrow (pip install pyarrow)") from None
        line = 0
        for batch in pq.ParquetFile(path).iter_batches(columns=[id_field, text_field]):
            for row in batch.to_pylist():
                line += 1
                yield line, row
        return
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8", errors="surrogateescape")
    with stream:
        for line, text in enumerate(stream, 1):
            if not text.strip():
                continue
            try:
                yield line, json.loads(text)
            except json.JSONDecodeError as err:
                yield line, f"not a JSON object ({err.msg} at column {err.colno})"


def count_rows(path: str) -> int | None:
    if path == "-":
        return None
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))


def check_row(row: object, id_field: str, text_field: str) -> tuple[str, str] | str:
    """(id, text), or why the row is refused."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return f"not a JSON object (a {type(row).__name__})"
    for name in (id_field, text_field):
        if name not in row or row[name] is None:
            return f"missing {name}"
        if not isinstance(row[name], str):
            return f"{name}: must be a string, got {type(row[name]).__name__}"
        try:
            row[name].encode("utf-8")
        except UnicodeEncodeError:
            return f"{name}: not valid Unicode (a lone surrogate or undecodable bytes)"
    passage_id, text = row[id_field], row[text_field]
    if not passage_id or len(passage_id) > MAX_ID_CHARS:
        return f"{id_field}: must have 1..{MAX_ID_CHARS} characters, got {len(passage_id)}"
    if not text.strip():
        return f"{text_field}: empty"
    return passage_id, text


async def index_corpus(client: AsyncRerankClient, args, summary: Summary, rejects) -> None:
    shard, shards = args.shard
    seen: dict[str, tuple[int, bytes]] = {}  # id → (first line, digest of its text)
    in_flight: set[asyncio.Task] = set()
    gate = asyncio.Semaphore(args.concurrency)
    bar = tqdm(total=count_rows(args.corpus), disable=args.quiet, unit="row", desc="index")

    def reject(line: int, reason: str, row: object) -> None:
        summary.rejected += 1
        rejects.write(json.dumps({"line": line, "reason": reason, "row": row}, ensure_ascii=False,
                                 default=str) + "\n")  # fmt: skip

    async def send(batch: list[tuple[str, str]]) -> None:
        try:
            done = await client.index([t for _, t in batch], [i for i, _ in batch],
                                      compression_ratio=args.compression_ratio)  # fmt: skip
        finally:
            gate.release()
        written = done.stored_bytes > 0  # states, or at least the id, were written
        summary.indexed += int(written.sum())
        summary.skipped += int((~written).sum())
        summary.tokens += int(done.tokens.sum())
        summary.bytes_stored += int(done.stored_bytes.sum())

    batch: list[tuple[str, str]] = []
    for line, row in read_rows(args.corpus, args.id_field, args.text_field):
        bar.update(1)
        checked = check_row(row, args.id_field, args.text_field)
        passage_id = checked[0] if isinstance(checked, tuple) else None
        mine = shard_of(passage_id, shards) == shard if passage_id else line % shards == shard
        if not mine:
            continue
        summary.rows += 1
        if isinstance(checked, str):
            reject(line, checked, row)
            continue
        digest = hashlib.sha256(checked[1].encode("utf-8")).digest()[:16]
        first = seen.setdefault(passage_id, (line, digest))
        if first[0] != line:
            if first[1] != digest:
                reject(line, f"{args.id_field} {passage_id!r} appeared at line {first[0]} with other text", row)
            else:
                summary.duplicates += 1
            continue
        batch.append(checked)
        if len(batch) == args.batch_size:
            await gate.acquire()
            task = asyncio.create_task(send(batch))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            batch = []
            for finished in [t for t in in_flight if t.done()]:
                finished.result()  # a failed batch stops the run at once
    if batch:
        await gate.acquire()
        in_flight.add(asyncio.create_task(send(batch)))
    try:
        await asyncio.gather(*in_flight)
    finally:
        bar.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestrank index", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=STATES_NOTE)  # fmt: skip
    p.add_argument("corpus", help='JSONL (one {"id": ..., "text": ...} object a line; - for stdin) or .parquet')
    p.add_argument("--model", default="kalm-reranker", help="the served reranker (default %(default)s)")
    p.add_argument("--url", action="append", help=f"gRPC endpoint, repeatable for failover (default {DEFAULT_URL})")
    p.add_argument("--compression-ratio", type=int, help="store at this ratio; it serves its multiples exactly "
                   "(default: the model's)")  # fmt: skip
    p.add_argument("--batch-size", type=int, help="rows per index call (default: the served max_encode_documents; "
                   "the client sends them in requests of it)")  # fmt: skip
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (default %(default)s)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/N", help="this worker's share: rows whose "
                   "id hashes to I mod N (default 0/1, the whole corpus)")  # fmt: skip
    p.add_argument("--rejects", help="where rejected rows go (default: <corpus>.rejects[.I-of-N].jsonl)")
    p.add_argument("--id-field", default="id")
    p.add_argument("--text-field", default="text")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per request, retries included")
    p.add_argument("--attempts", type=int, default=100, help="per request (default %(default)s): a busy server refuses "
                   "at once and says when it has room, and a batch job waits for it, within --timeout-s")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def rejects_path(args) -> Path:
    if args.rejects:
        return Path(args.rejects)
    shard, shards = args.shard
    base = "stdin" if args.corpus == "-" else args.corpus
    return Path(f"{base}.rejects{f'.{shard}-of-{shards}' if shards > 1 else ''}.jsonl")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if (args.batch_size is not None and args.batch_size < 1) or args.concurrency < 1 or args.attempts < 1:
        print("nestrank index: --batch-size, --concurrency and --attempts must be >= 1", file=sys.stderr)
        return 2
    if args.corpus != "-" and not Path(args.corpus).is_file():
        print(f"nestrank index: {args.corpus}: no such file", file=sys.stderr)
        return 2
    summary = Summary()
    path = rejects_path(args)

    async def run() -> None:
        retry = RetryPolicy(attempts=args.attempts)
        async with AsyncRerankClient(args.url or DEFAULT_URL, args.model, concurrency=args.concurrency,
                                     timeout_s=args.timeout_s, retry=retry) as client:  # fmt: skip
            info = await client.info()  # an unknown model or a missing server fails here, before any reading
            args.batch_size = args.batch_size or info.config.max_encode_documents
            with path.open("w", encoding="utf-8", errors="surrogateescape") as rejects:
                await index_corpus(client, args, summary, rejects)

    started = time.perf_counter()
    try:
        asyncio.run(run())
    except NestrankError as err:
        summary.failure = f"{type(err).__name__}: {err}"
    except KeyboardInterrupt:
        summary.failure = "interrupted"
    summary.seconds = time.perf_counter() - started
    if path.exists() and path.stat().st_size == 0:
        path.unlink()
    elif path.exists():
        summary.rejects_file = str(path)
    print(f"nestrank index: {summary.line()}", file=sys.stderr)
    if summary.failure:
        print(f"nestrank index: stopped: {summary.failure}; rerun to resume (stored rows are skipped)", file=sys.stderr)
    elif summary.rejected:
        print(f"nestrank index: {summary.rejected} rows rejected: see {path}", file=sys.stderr)
    print(json.dumps({**summary.__dict__, "passages_per_s": round(summary.passages_per_s, 2)}))
    return 2 if summary.failure else 1 if summary.rejected else 0
