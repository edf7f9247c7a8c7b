"""Records -> tokenized examples for a whole dataset, with counts of what was dropped.

The stages (format detection, conversation, rendering) are the pure functions of
``formats`` and ``render``; this module runs them over many records, applies ``on_error`` and
keeps the statistics a user needs to trust the data (truncated, dropped, trained-token ratio).
"""

from __future__ import annotations

import logging
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import (
    DataFormatError,
    MixedFormatError,  # noqa: F401 (re-exported)
)
from .conversation import Conversation
from .formats import detect_format, record_text, to_conversation
from .render import IGNORE_INDEX, ChatRenderer
from .rendering import RenderOptions
from .stats import PrepareStats
from .templates import template_error

__all__ = ["PrepareStats", "MixedFormatError", "tokenize_records", "prepare_records", "columns_to_dataset",
           "is_tokenized", "record_location"]

logger = logging.getLogger(__name__)


def is_tokenized(dataset: Any) -> bool:
    """True when ``dataset`` already holds ``input_ids`` (and so skips rendering)."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return "input_ids" in names
    try:
        first = dataset[0]
    except (TypeError, IndexError, KeyError):
        return False
    return isinstance(first, dict) and "input_ids" in first


def record_location(dataset: Any, index: int) -> str:
    """``file:line`` for records read by our loaders, else ``record N``."""
    source = getattr(dataset, "source", None)
    lines = getattr(dataset, "line_numbers", None)
    if source and lines is not None and index < len(lines):
        return f"{source}:{lines[index]}"
    return f"record {index}"


def _from_formatted(value: Any, where: str, fmt: str, system_prompt: str | None) -> Conversation | str:
    """What a user's formatting_func returned: text, a Conversation, a list of messages or a record."""
    if isinstance(value, str):
        return value
    if isinstance(value, Conversation):
        return value.validate(where)
    if isinstance(value, list):
        return to_conversation({"messages": value}, "messages", where=where, system_prompt=system_prompt)
    if isinstance(value, dict):
        return to_conversation(value, fmt, where=where, system_prompt=system_prompt)
    raise DataFormatError(f"{where}: formatting_func returned {type(value).__name__}; "
                          "expected a string, a Conversation, a list of messages or a record dict")


_CHUNK = 256
_PROGRESS_FROM = 20_000  # records: smaller datasets are prepared before a bar would be worth drawing


def _progress_bar(records: Any) -> Any:
    """A progress bar on a terminal for a large (or streamed, size unknown) dataset; None otherwise
    (redirected output stays clean; the counts are in metrics.json)."""
    import sys

    total = len(records) if hasattr(records, "__len__") else None
    if (total is not None and total < _PROGRESS_FROM) or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    source = getattr(records, "source", None)
    return tqdm(total=total, desc=f"preparing {Path(source).name}" if source else "preparing data", unit=" records",
                leave=False, dynamic_ncols=True)  # records rendered and tokenized per batch


# -- bounded work per record ----------------------------------------------------------------------
# Only the first max_seq_length tokens of a sample are kept, yet rendering and tokenizing a 50 MB
# message costs minutes and gigabytes (offsets for millions of tokens). So a message whose text is
# far longer than those tokens can cover is cut first. A token covers at most `longest` characters
# (the longest token of the vocabulary, in its own alphabet: bytes for byte-level BPE, which are
# never fewer than the characters), so the first L tokens of any text lie within L * longest
# characters. The budget keeps 4x that (normalizers that merge characters, e.g. NFC) plus 64 tokens
# of margin, so the cut is at least 64 tokens past the last kept one: pre-tokenization and BPE
# merges are local, so the kept tokens (and their labels) are those of the uncut text. Everything
# before a cut message is unchanged, and a cut message already reaches past max_seq_length, so
# everything after it is truncated away either way. (A template that renders a message's content
# other than verbatim, e.g. splitting off a trailing </think> part, sees the cut text.)
_TOKEN_MARGIN = 64


def longest_token_chars(tokenizer: Any) -> int:
    """The length of the vocabulary's longest token string (>= the characters any token covers)."""
    cached = getattr(tokenizer, "_sage_longest_token", None)
    if cached is None:
        try:
            cached = max((len(t) for t in tokenizer.get_vocab()), default=16)
        except Exception:  # noqa: BLE001 - no vocabulary to look at: a generous guess
            cached = 64
        cached = max(int(cached), 1)
        try:
            tokenizer._sage_longest_token = cached
        except AttributeError:
            pass
    return cached


def char_budget(tokenizer: Any, max_seq_length: int | None) -> int | None:
    """Characters of one message (or text record) that can still matter for ``max_seq_length`` tokens."""
    if not max_seq_length:
        return None
    return 4 * longest_token_chars(tokenizer) * (max_seq_length + _TOKEN_MARGIN) + 1024


def cut_item(item: Any, budget: int | None) -> tuple[Any, bool]:
    """A text or Conversation with every text longer than ``budget`` characters cut to it."""
    if budget is None:
        return item, False
    if isinstance(item, str):
        return (item[:budget], True) if len(item) > budget else (item, False)
    if not isinstance(item, Conversation) or not any(len(m.content) > budget or _long_calls(m, budget)
                                                     for m in item.messages):
        return item, False
    import dataclasses

    messages = [dataclasses.replace(m, content=m.content[:budget], tool_calls=_cut_calls(m.tool_calls, budget))
                if len(m.content) > budget or _long_calls(m, budget) else m for m in item.messages]
    return dataclasses.replace(item, messages=messages), True


def _long_calls(message: Any, budget: int) -> bool:
    return any(isinstance(c.get("function", {}).get("arguments"), str) and len(c["function"]["arguments"]) > budget
               for c in message.tool_calls or () if isinstance(c, dict) and isinstance(c.get("function"), dict))


def _cut_calls(calls: Any, budget: int) -> Any:
    if not calls:
        return calls
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str) and len(fn["arguments"]) > budget:
            call = {**call, "function": {**fn, "arguments": fn["arguments"][:budget]}}
        out.append(call)
    return out


def formatting_func_error(exc: BaseException, func: Callable, where: str) -> DataFormatError:
    """``data.jsonl:3: formatting_func to_messages (my_format.py:5) raised KeyError: 'q'``."""
    code = getattr(func, "__code__", None)
    home = code.co_filename if code is not None else None
    frames = traceback.extract_tb(exc.__traceback__)
    frame = next((f for f in reversed(frames) if f.filename == home), frames[-1] if frames else None)
    at = f" ({frame.filename}:{frame.lineno})" if frame is not None else ""
    name = getattr(func, "__qualname__", None) or type(func).__name__
    return DataFormatError(f"{where}: formatting_func {name}{at} raised {type(exc).__name__}: {exc}")


def tokenize_records(records: Iterable[dict[str, Any]], tokenizer: Any, options: RenderOptions | None = None,
                     **settings: Any) -> tuple[dict[str, list], PrepareStats]:
    """Render every record; returns columns ``input_ids``, ``labels``, ``length`` and stats.

    ``options`` (:class:`.rendering.RenderOptions`, what a run passes), or its fields as keyword
    arguments: ``tokenize_records(records, tokenizer, max_seq_length=512, mask_history=True)``.
    Records whose messages contain control-token text are counted in ``stats.control_token_text``
    and named in the warnings.

    A file whose records mix formats is an error (it is almost always two datasets concatenated
    by mistake, and the masks would differ between them); pass ``fmt`` explicitly to force one.

    Records are rendered and tokenized in batches (:meth:`ChatRenderer.render_many`); errors are
    still handled one record at a time, in record order, exactly as a record-by-record pass would.
    """
    renderer = ChatRenderer(tokenizer, options, **settings)
    options = renderer.options
    fmt, max_seq_length, formatting_func, on_error = (options.fmt, options.max_seq_length, options.formatting_func,
                                                      options.on_error)
    system_prompt, style, tools = options.system_prompt, options.agent_format, options.tools
    budget = char_budget(tokenizer, max_seq_length)
    stats = PrepareStats()
    columns: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
    first_format: tuple[str, str] | None = None
    pending: list[tuple[str, Any, str | None]] = []  # (where, Conversation | text | exception, format)

    def fail(exc: Exception) -> None:
        if on_error == "raise" or isinstance(exc, MixedFormatError) or not isinstance(exc, DataFormatError):
            raise exc
        stats.skipped_invalid += 1
        if len(stats.errors) < 20:
            stats.errors.append(str(exc))

    # One chunk of lookahead: while the Rust tokenizer encodes chunk k in a worker thread (it
    # releases the GIL), this thread renders chunk k+1. Results are still handled in record order.
    pool = ThreadPoolExecutor(1) if renderer.encode_in_thread_ok() else None
    inflight: list[tuple[list, list[int], Any, Any]] = []

    def flush(final: bool = False) -> None:
        if pending:
            chunk = list(pending)
            pending.clear()
            ready = [k for k, (_w, item, _f) in enumerate(chunk) if not isinstance(item, BaseException)]
            job = renderer.start_many([chunk[k][1] for k in ready], [chunk[k][0] for k in ready])
            encoded = pool.submit(renderer.encode, job[2]) if pool is not None else renderer.encode(job[2])
            inflight.append((chunk, ready, job, encoded))
        while len(inflight) > (0 if final or pool is None else 1):
            chunk, ready, job, encoded = inflight.pop(0)
            encoded = encoded.result() if pool is not None else encoded
            handle(chunk, ready, renderer.finish_many(job, encoded))

    def handle(chunk: list, ready: list[int], results: list[Any]) -> None:
        by_index = dict(zip(ready, results))
        for k, (_where, item, record_fmt) in enumerate(chunk):
            result = item if isinstance(item, BaseException) else by_index[k]
            if isinstance(result, BaseException):
                fail(template_error(result, _where, user_template=options.chat_template.user_set))
                continue
            stats.formats[record_fmt] += 1
            meta = getattr(item, "meta", {})
            stats.control_token_text += bool(meta.get("control_text"))
            for warning in meta.get("warnings", ()):
                stats.warnings += 1
                if len(stats.errors) < 20:
                    stats.errors.append(f"warning: {warning}")
            if result is None:
                stats.dropped_no_trained_tokens += 1
                continue
            stats.truncated += result.truncated
            stats.examples += 1
            stats.tokens += len(result.input_ids)
            stats.trained_tokens += sum(1 for lab in result.labels if lab != IGNORE_INDEX)
            columns["input_ids"].append(result.input_ids)
            columns["labels"].append(result.labels)
            columns["length"].append(len(result.input_ids))

    progress = _progress_bar(records)
    for index, record in enumerate(records):
        stats.records += 1
        if progress is not None and index % _CHUNK == 0:
            progress.update(index - progress.n)
        where = record_location(records, index)
        record_fmt = None
        try:
            if formatting_func is not None:
                record_fmt = "formatting_func"
                try:
                    value = formatting_func(record)
                except Exception as exc:  # the user's code: one line with the record and its file:line
                    raise formatting_func_error(exc, formatting_func, where) from exc
                item = _from_formatted(value, where, fmt, system_prompt)
            else:
                record_fmt = detect_format(record, where) if fmt == "auto" else fmt
                if first_format is None:
                    first_format = (record_fmt, where)
                elif fmt == "auto" and record_fmt != first_format[0]:
                    raise MixedFormatError(
                        f"{where}: this record is in the {record_fmt} format but {first_format[1]} is "
                        f"{first_format[0]}; one dataset must use one format (split the file, or set "
                        "data.format to force one)")
                item = record_text(record, where) if record_fmt == "text" else to_conversation(
                    record, record_fmt, where=where, system_prompt=system_prompt, agent_format=style, tools=tools)
        except DataFormatError as exc:
            if on_error == "raise" or isinstance(exc, MixedFormatError):
                _finish_then_raise(flush, pool)  # earlier records first: their errors come before this one
            item = exc
        except Exception:
            _finish_then_raise(flush, pool)
        if not isinstance(item, BaseException):
            item, cut = cut_item(item, budget)
            stats.cut_before_tokenizing += cut
        del record  # a huge record is not kept alive while the chunk waits
        pending.append((where, item, record_fmt))
        if len(pending) >= _CHUNK:
            try:
                flush()
            except BaseException:
                _shutdown(pool)
                raise
    try:
        flush(final=True)
    finally:
        _shutdown(pool)
        if progress is not None:
            progress.close()
    if stats.skipped_invalid:
        logger.warning("skipped %d invalid records (on_error=skip); first: %s", stats.skipped_invalid,
                       stats.errors[0] if stats.errors else "")
    if stats.cut_before_tokenizing:
        logger.info("%d records had a message longer than %d characters: cut before tokenizing (only the first "
                    "max_seq_length=%s tokens of a sample are kept, and these are the same)",
                    stats.cut_before_tokenizing, budget, max_seq_length)
    if stats.dropped_no_trained_tokens:
        logger.warning("dropped %d samples with no trained token left (all cut by max_seq_length=%s, or every "
                       "trained reply renders empty)", stats.dropped_no_trained_tokens, max_seq_length)
    if stats.control_token_text:
        logger.warning("%d records contain control-token text inside their messages (%s, "
                       "data.control_tokens_in_content=%s)", stats.control_token_text,
                       "tokenized as text" if options.control_tokens_in_content == "text" else "kept as control tokens",
                       options.control_tokens_in_content)
    unrendered_tools = [e for e in stats.errors if "does not render the tools" in e]
    if unrendered_tools:
        logger.warning("records whose tools the chat template does not render (the model never sees them); first: "
                       "%s", unrendered_tools[0].removeprefix("warning: "))
    return columns, stats


def _finish_then_raise(flush: Callable, pool: Any) -> None:
    """Handle the records before the current one (their errors come first), then re-raise."""
    try:
        flush(final=True)
    finally:
        _shutdown(pool)
    raise  # noqa: PLE0704 - re-raises the exception being handled by the caller


def _shutdown(pool: Any) -> None:
    if pool is not None:
        pool.shutdown(wait=True)


def columns_to_dataset(columns: dict[str, list]) -> Any:
    """Tokenized columns -> ``datasets.Dataset`` with the int64 columns ``Dataset.from_dict`` would
    infer, built through one typed Arrow table (about twice as fast as that inference)."""
    return _dataset_from_table(_columns_table(columns))


def _columns_table(columns: dict[str, list]) -> Any:
    import pyarrow as pa

    ids_type = pa.list_(pa.int64())
    return pa.table({"input_ids": pa.array(columns["input_ids"], type=ids_type),
                     "labels": pa.array(columns["labels"], type=ids_type),
                     "length": pa.array(columns["length"], type=pa.int64())})


def _dataset_from_table(table: Any) -> Any:
    from datasets import Dataset

    try:
        from datasets.table import InMemoryTable
    except ImportError:  # pragma: no cover - older/newer datasets
        return Dataset.from_dict(table.to_pydict())
    return Dataset(InMemoryTable(table))


def prepare_records(records: Any, tokenizer: Any, options: RenderOptions | None = None, *, cache: bool = True,
                    cache_dir: str | None = None, **settings: Any) -> tuple[Any, PrepareStats]:
    """:func:`tokenize_records` as a ``datasets.Dataset``, through the tokenized-data cache
    (:mod:`.cache`): the same records, tokenizer and options prepared again are read back instead
    of rendered. ``options`` / ``settings``: as :func:`tokenize_records`."""
    from . import cache as _cache

    options = RenderOptions.build(tokenizer, options, **settings)
    key = root = None
    if cache and options.formatting_func is None:
        try:
            key = _cache.cache_key(records, tokenizer, options.cache_fields())
        except Exception as exc:  # noqa: BLE001 - no cache rather than no run
            logger.debug("tokenized-data cache: no key (%s)", exc)
            key = None
        if key is not None:
            root = _cache.cache_root(cache_dir)
            hit = _cache.load_cached(root, key)
            if hit is not None:
                dataset, state = hit
                logger.info("tokenized data read from the cache (%s)", root / "tokenized" / key)
                return dataset, PrepareStats.from_state(state)
    columns, stats = tokenize_records(records, tokenizer, options)
    table = _columns_table(columns)
    if key is not None and stats.examples:
        entry = _cache.store_cached(root, key, table, stats.state())
        if entry is not None:
            loaded = _cache.load_cached(root, key)
            if loaded is not None:
                return loaded[0], stats  # memory-mapped, like a later cache hit
    return _dataset_from_table(table), stats
