"""The engine's block step: a block's prepared arrays (engine.Prepared) -> one outcome per record.

Every assistant message of the block is handled in the same flat arrays, file order kept: token rows
(one per recorded token), their alternatives row-major. In order, as the intermediate format defines them:
1. what only the record-by-record check may word (an id outside the vocabulary, a repeated id in a row,
   token_ids that do not fit the logprobs) raises `Unconvertible`;
2. the chosen ids: the message's own `token_ids` when it has them, else the ids recovered from its entries;
3. rejections, per message: no logprobs, a chosen id not recovered, recovered ids that do not decode to the
   content. A record stops at its first rejected message: the messages before it are counted (as converted),
   the rejected one only for the ids it checked, the ones after it not at all;
4. for the messages converted: alternatives whose id is not recovered leave their row, a row with none
   holds the chosen token, an end-of-turn row is added where the teacher stopped without its logprob (or
   `token_ids` carries it), and the mass cut keeps each row's shortest prefix reaching min_prob_mass. Rows
   are padded to the block's widest (-inf, mass 0), so each row keeps what its own message's [T, K] keeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from memdistill.convert.cartridges_io import OutMessage, OutRow, OutTop
from memdistill.convert.engine import dense_rows, offsets_of, segment_sums
from memdistill.convert.figures import mass_curve_row_counts
from memdistill.convert.mass import MISSING_ID, flatten_by_mass
from memdistill.convert.outcomes import SampleRejected, Unconvertible, no_logprobs, not_decoding, not_recovered
from memdistill.convert.token_ids import OUT_OF_RANGE_ID

if TYPE_CHECKING:
    from memdistill.convert.engine import Engine, Prepared


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices starts[i] .. starts[i]+lengths[i]-1 of every range, concatenated."""
    return np.repeat(starts - offsets_of(lengths)[:-1], lengths) + np.arange(int(lengths.sum()))


def assemble_block(engine: Engine, p: Prepared, metadata: list[dict[str, Any]], wheres: list[str]) -> list[OutRow | SampleRejected | None]:
    summary, tokenizer = engine.summary, engine.tokenizer
    n = len(wheres)
    is_assistant = np.fromiter((role == "assistant" for role in p.roles), dtype=bool, count=len(p.roles))
    messages = np.flatnonzero(is_assistant)  # the block's assistant messages, j = 0..M-1
    M = messages.size
    record_of = np.searchsorted(p.row_offsets, messages, side="right") - 1
    has_lp = p.item_lengths[messages] >= 0
    T = np.maximum(p.item_lengths[messages], 0)
    has_given = p.given_lengths[messages] >= 0
    given_len = np.maximum(p.given_lengths[messages], 0)
    given_first = p.given_offsets[messages]

    item_taken = np.repeat(is_assistant, np.maximum(p.item_lengths, 0))
    alt_taken = np.repeat(item_taken, p.alt_counts)
    counts = p.alt_counts[item_taken]
    alt_ids, alt_lp = p.alt_ids[alt_taken], p.alt_lp[alt_taken]
    resolved, chosen_lp, exact = p.chosen_ids[item_taken], p.chosen_lp[item_taken], p.chosen_exact[item_taken]
    message_rows = offsets_of(T)
    message_of_row = np.repeat(np.arange(M), T)
    row_given = has_given[message_of_row]

    # 1. What the check words as an error.
    if (alt_ids == OUT_OF_RANGE_ID).any() or (resolved[~row_given] == OUT_OF_RANGE_ID).any():
        raise Unconvertible("an id outside the vocabulary")
    # Every token row's alternatives, dense; the converted rows are these unless some are dropped below.
    dense_lp, dense_ids = dense_rows(counts, alt_lp, alt_ids)
    if dense_ids.shape[1] > 1:
        ordered = np.sort(dense_ids, axis=1)
        if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != MISSING_ID)).any():
            raise Unconvertible("an id twice in one row")
    checked_given = np.flatnonzero(has_lp & has_given)
    given_eot = np.zeros(M, dtype=bool)
    if checked_given.size:
        values = p.given_values[_ranges(given_first[checked_given], given_len[checked_given])]
        if values.size and (values.min() < 0 or values.max() >= engine.resolver.limit):
            raise Unconvertible("token_ids outside the vocabulary")
        lengths, tokens = given_len[checked_given], T[checked_given]
        last = np.full(lengths.size, MISSING_ID, dtype=np.int64)
        last[lengths > 0] = p.given_values[(given_first[checked_given] + lengths - 1)[lengths > 0]]
        with_eot = (lengths == tokens + 1) & np.isin(last, engine.eot_ids)
        if not ((lengths == tokens) | with_eot).all():
            raise Unconvertible("token_ids of another length")
        given_eot[checked_given] = with_eot

    # 2. The chosen ids.
    chosen = resolved.copy()
    if row_given.any():
        within = np.arange(chosen.size) - message_rows[message_of_row]
        chosen[row_given] = p.given_values[(given_first[message_of_row] + within)[row_given]]

    # 3. Rejections, and how far each record goes.
    unrecovered_row = (chosen == MISSING_ID) & ~row_given
    unrecovered = np.bincount(message_of_row[unrecovered_row], minlength=M)
    no_lp = ~has_lp
    not_found = has_lp & ~has_given & (unrecovered > 0)
    not_decoded = np.zeros(M, dtype=bool)
    decoded: dict[int, str] = {}
    to_decode = has_lp & ~has_given & ~not_found & (np.bincount(message_of_row[~exact], minlength=M) > 0)
    if tokenizer.decode is not None and to_decode.any():
        plain = ~np.isin(chosen, engine.special_ids)  # decode_text's rule: special tokens left out
        which = np.flatnonzero(to_decode)
        lists = [chosen[message_rows[j]:message_rows[j + 1]][plain[message_rows[j]:message_rows[j + 1]]].tolist() for j in which]
        texts = tokenizer.decode_batch(lists) if tokenizer.decode_batch is not None else [tokenizer.decode(ids) for ids in lists]
        for j, text in zip(which.tolist(), texts):
            if text != (p.contents[messages[j]] or ""):
                not_decoded[j], decoded[j] = True, text
    rejecting = no_lp | not_found | not_decoded
    first_reject = np.full(n, M, dtype=np.int64)
    np.minimum.at(first_reject, record_of[rejecting], np.flatnonzero(rejecting))
    processed = np.arange(M) <= first_reject[record_of]
    completed = processed & ~rejecting
    alternatives = np.bincount(message_of_row, weights=counts, minlength=M).astype(np.int64)
    checked = processed & has_lp
    summary.checked_ids += int(T[checked].sum() + alternatives[checked].sum())
    summary.missing_logprobs += int(np.count_nonzero(no_lp & processed)) if not engine.strict else 0
    summary.unmapped_ids += int(unrecovered[not_found & processed].sum() + T[not_decoded & processed].sum())

    # 4. The converted messages (those of a record rejected later included: their counts stand).
    done = np.flatnonzero(completed)
    row_kept = completed[message_of_row]
    T_done, record_done = T[done], record_of[done]
    rows_of = offsets_of(T_done)
    recovered = alt_ids != MISSING_ID
    if not row_kept.all() or not recovered.all():
        alt_kept = np.repeat(row_kept, counts)
        counts, alt_ids, alt_lp, recovered = counts[row_kept], alt_ids[alt_kept], alt_lp[alt_kept], recovered[alt_kept]
        chosen, chosen_lp = chosen[row_kept], chosen_lp[row_kept]
        dropped = int(recovered.size - np.count_nonzero(recovered))
        if dropped:
            counts = np.bincount(np.repeat(np.arange(counts.size), counts)[recovered], minlength=counts.size).astype(np.int64)
            alt_lp, alt_ids = alt_lp[recovered], alt_ids[recovered]
            summary.dropped_alternatives += dropped
            summary.unmapped_ids += dropped
        dense_lp, dense_ids = dense_rows(counts, alt_lp, alt_ids)
    summary.assistant_messages += int(done.size)
    # Rows with no alternatives recorded: the chosen token is the only known entry of its row.
    empty = counts == 0
    summary.rows_without_alternatives += int(np.count_nonzero(empty))
    dense_lp[empty, 0], dense_ids[empty, 0] = chosen_lp[empty], chosen[empty]
    valid = np.isfinite(dense_lp)
    per_row = valid.sum(axis=1)
    summary.topk_entries += int(per_row.sum())
    summary.chosen_not_in_topk += int(np.count_nonzero(~((dense_ids == chosen[:, None]) & valid).any(axis=1)))
    widths = np.ones(done.size, dtype=np.int64)  # K of each message's [T, K]
    nonempty = T_done > 0
    if nonempty.any():
        widths[nonempty] = np.maximum.reduceat(np.maximum(counts, 1), rows_of[:-1][nonempty])
    row_record = np.repeat(record_done, T_done)
    record_rows = np.searchsorted(row_record, np.arange(n + 1))
    figures = engine.figures
    if figures is not None:
        kept, below = mass_curve_row_counts(dense_lp, figures.thresholds)
        kept_sums, below_sums = segment_sums(kept, record_rows), segment_sums(below.astype(np.int64), record_rows)
        recorded_sums = segment_sums(per_row, record_rows)
        top_k = np.zeros(n, dtype=np.int64)
        np.maximum.at(top_k, row_record, per_row)

    # End of turn the logprobs omit (or token_ids carry): one more row, holding just the id at logprob 0.
    eot = np.zeros(done.size, dtype=bool)
    eot_value = np.full(done.size, engine.eot_ids[0] if engine.eot_ids else MISSING_ID, dtype=np.int64)
    if engine.append_eot:
        from_given = given_eot[done]
        eot |= from_given
        eot_value[from_given] = p.given_values[(given_first[done] + given_len[done] - 1)[from_given]]
        if engine.eot_ids:
            stops = np.array([metadata[r].get("finish_reason") == "stop" for r in range(n)], dtype=bool)
            last = np.where(nonempty, chosen[np.maximum(rows_of[1:] - 1, 0)] if chosen.size else MISSING_ID, MISSING_ID)
            eot |= ~from_given & stops[record_done] & ~(nonempty & np.isin(last, engine.eot_ids))
    rows_out = T_done + eot
    out_rows = offsets_of(rows_out)
    position = np.arange(chosen.size) + np.repeat(out_rows[:-1] - rows_of[:-1], T_done)
    eot_rows = out_rows[1:][eot] - 1
    full_lp = np.full((int(out_rows[-1]), dense_lp.shape[1]), -np.inf)
    full_ids = np.full(full_lp.shape, MISSING_ID, dtype=np.int64)
    full_lp[position], full_ids[position] = dense_lp, dense_ids
    full_lp[eot_rows, 0], full_ids[eot_rows, 0] = 0.0, eot_value[eot]
    full_chosen = np.empty(full_lp.shape[0], dtype=np.int64)
    full_chosen[position], full_chosen[eot_rows] = chosen, eot_value[eot]
    flat = flatten_by_mass(full_lp, full_ids, engine.min_prob_mass)
    summary.assistant_tokens += int(full_chosen.size)
    summary.kept_entries += int(flat.token_id.size)
    summary.eot_appended += int(np.count_nonzero(eot))
    entry_rows = offsets_of(np.bincount(flat.token_idx, minlength=full_lp.shape[0]))
    token_idx = flat.token_idx - out_rows[:-1][np.repeat(np.arange(done.size), rows_out)][flat.token_idx]
    eot_of_record = np.bincount(record_done, weights=eot, minlength=n) > 0

    # Per record, in file order: the contract check, then its rejection or its row.
    outcomes: list[OutRow | SampleRejected | None] = [None] * n
    row_offsets, roles, contents = p.row_offsets, p.roles, p.contents
    texts: list[tuple[int, int, str]] = []  # (record, message, text) of the rows to write
    for r in range(n):
        engine.records_seen += 1
        engine.check_logprobs_mode(metadata[r], wheres[r])
        first = int(row_offsets[r])
        if first_reject[r] < M:
            j = int(first_reject[r])
            field = f"{wheres[r]}: messages[{int(messages[j]) - first}]"
            if no_lp[j]:
                rejected = no_logprobs(field, engine.strict)
            elif not_found[j]:
                t = int(np.argmax(unrecovered_row[message_rows[j]:message_rows[j + 1]]))
                rejected = not_recovered(field, t, int(unrecovered[j]), int(T[j]))
            else:
                rejected = not_decoding(field, decoded[j], contents[messages[j]] or "")
            engine.reject(wheres[r], metadata[r], rejected)
            outcomes[r] = rejected
            continue
        texts.extend((r, m, contents[m] or "") for m in range(first, int(row_offsets[r + 1])) if roles[m] != "assistant")
    text_ids = iter(engine.encode_texts([text for _, _, text in texts]))
    texts_of = {(r, m): ids for (r, m, _), ids in zip(texts, text_ids)}
    position_of = {int(messages[j]): k for k, j in enumerate(done)}
    for r in range(n):
        if outcomes[r] is not None:
            continue
        if figures is not None:
            figures.add_counts(kept_sums[r], below_sums[r], int(record_rows[r + 1] - record_rows[r]), int(recorded_sums[r]), int(top_k[r]))
        first, end = int(row_offsets[r]), int(row_offsets[r + 1])
        out: list[OutMessage] = []
        for m in range(first, end):
            content = contents[m] or ""
            k = position_of.get(m)
            if k is None:
                out.append(OutMessage(roles[m], content, texts_of[(r, m)], None))
                continue
            lo, hi = int(out_rows[k]), int(out_rows[k + 1])
            a, z = int(entry_rows[lo]), int(entry_rows[hi])
            out.append(OutMessage("assistant", content, full_chosen[lo:hi], OutTop(token_idx[a:z], flat.token_id[a:z], flat.logprobs[a:z], (hi - lo, int(widths[k])))))
        system_prompt = p.system_prompts[r]
        if system_prompt is None:
            system_prompt = next((contents[m] or "" for m in range(first, end) if roles[m] == "system"), "")
        row = engine.finish_row(out, metadata[r], bool(eot_of_record[r]), system_prompt, p.types[r])
        outcomes[r] = row if engine.accept(row) else None
    return outcomes
