#!/usr/bin/env python3
"""Find where an undocumented MGM payload keeps power and energy, using the vendor app's CSV or
the module's own log lines as ground truth.

    find_fields.py CAPTURE CSV [CSV ...] [--column power|energy|returned ...] [--top N]
                   [--max-offset-s 120] [--json]
    find_fields.py CAPTURE --truth log [--max-pair-s S] [--top N] [--json]

CAPTURE: a capture file from tools/capture.py (or a terminal program's timestamped log).
CSV: the vendor's export, rows `MM/DD/YYYY HH:MM:SS,<value>[,<value>...]` in kW or kWh (units from
its header row when there is one). --column names the CSV value columns in order (over all CSV
files); without it the header's unit decides (kWatts -> power, kWhs -> energy).

For each column it searches the clock offset between the capture and the CSV (the CSV's clock
differs and its values lag), then every candidate field: byte offset, width 1-4, big/little endian,
unsigned / two's complement / one's complement / sign-magnitude / the v2 sign rule, times a
plausible scale. Power is compared value by value; energy (cumulative counters) by the rate at
which the field grows against the CSV's energy over the same time spans. Also reports constant
bytes, counter-like fields, and changing bytes that nothing explains.

--truth log (no CSV): the capture's own received-message records (MGM log mode: "cmd": "rx",
cluster 0702) are decoded with the firmware's ZCL decoder, and each reading frame is paired with the
nearest one in time (within --max-pair-s, default half the polling interval, at most 10 s): their
power, energy consumed and energy returned are the truth, sample by sample, with no clock offset.
Exit status: 0 ok, 2 usage or unreadable input.
"""
import argparse
import datetime
import json
import math
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import capture_format as cf  # noqa: E402
import decoders  # noqa: E402 (the firmware's, on the path capture_format set)

EPOCH = datetime.datetime(1970, 1, 1)
KINDS = ("power", "energy", "returned")
ENCODINGS = ("unsigned", "twos", "ones", "signmag", "v2sign")
ENC_TEXT = {"unsigned": "unsigned", "twos": "two's complement", "ones": "one's complement",
            "signmag": "sign-magnitude",
            "v2sign": "v2 sign rule (two top bits: one's complement, top bit: sign-magnitude)"}
# value = raw * scale, in W or Wh; multipliers like 3 are seen on real meters.
SCALES = sorted(m * 10.0 ** e for e in range(-4, 5) for m in (1, 2, 3, 5))
CSV_SAMPLE = ("Time Bucket (America/New_York),Main (kWatts)\n"
              "            12/08/2023 08:55:46,1.4140\n            12/08/2023 08:55:47,1.4140")


class InputError(ValueError):
    pass


def secs(dt):
    return (dt - EPOCH).total_seconds()


# ---------------------------------------------------------------- the vendor's CSV
_ROW = re.compile(r'^\s*"?(\d{1,2}/\d{1,2}/\d{4}[ T]\d{1,2}:\d\d(?::\d\d)?'
                  r'|\d{4}-\d\d-\d\d[ T]\d\d:\d\d(?::\d\d)?)"?\s*,(.*)$')
_FORMATS = ("%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")


def _row_time(s):
    s = s.replace("T", " ")
    for f in _FORMATS:
        try:
            return datetime.datetime.strptime(s, f)
        except ValueError:
            pass
    raise ValueError(s)


def _unit(cell):
    """A header cell's unit -> (kind, factor to W/Wh) or None."""
    c = cell.lower()
    if re.search(r"kwhs?\b", c):
        return "energy", 1000.0
    if re.search(r"kwatts?\b|\bkw\b", c):
        return "power", 1000.0
    if re.search(r"\bwhs?\b", c):
        return "energy", 1.0
    if re.search(r"\bwatts?\b|\(w\)", c):
        return "power", 1.0
    return None


def _float(cell):
    cell = cell.strip().strip('"')
    try:
        v = float(cell)
    except ValueError:
        return math.nan
    return v if math.isfinite(v) else math.nan


class Column:
    def __init__(self, source, index, unit):
        self.source, self.index, self.unit = source, index, unit  # unit: (kind, factor) or None
        self.kind = None
        self.times = []
        self.values = []


def read_csv(path):
    """-> ([Column], header lines). Raises InputError with a sample of the expected format."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig", "replace")
    except OSError as e:
        raise InputError("cannot read %s: %s" % (path, e.strerror or e))
    header, rows, bad = [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _ROW.match(line)
        t = None
        if m:
            try:
                t = _row_time(m.group(1))
            except ValueError:
                t = None
        if t is None:
            (bad if rows else header).append((lineno, line))
            continue
        rows.append((t, [_float(c) for c in m.group(2).split(",")]))
    expect = "\n  expected rows like:\n            %s" % CSV_SAMPLE
    if not rows:
        first = (header or [(0, "(empty file)")])[0]
        raise InputError("%s: no data rows found (line %d: %s)%s"
                         % (path, first[0], first[1][:100], expect))
    if len(bad) > max(3, len(rows) // 20):
        raise InputError("%s line %d: unreadable row: %s%s" % (path, bad[0][0], bad[0][1][:100], expect))
    if len(header) > 20:
        raise InputError("%s: %d lines before the first data row%s" % (path, len(header), expect))
    ncols = max(len(v) for _, v in rows)
    units = [None] * ncols
    for _, line in header:
        cells = line.split(",")
        if len(cells) == ncols + 1:  # "Time (zone),Main (kWatts),..." names each column
            for i, c in enumerate(cells[1:]):
                units[i] = _unit(c) or units[i]
        elif ncols == 1 and _unit(line):  # a free-form header naming the unit
            units[0] = _unit(line)
    cols = [Column(path, i + 1, units[i]) for i in range(ncols)]
    for t, vals in sorted(rows, key=lambda r: r[0]):
        for i, col in enumerate(cols):
            v = vals[i] if i < len(vals) else math.nan
            col.times.append(secs(t))
            col.values.append(v)
    for c in cols:
        c.times = np.array(c.times)
        c.values = np.array(c.values)
        ok = np.isfinite(c.values)
        c.times, c.values = c.times[ok], c.values[ok]
        if len(c.times) < 2:
            raise InputError("%s column %d: fewer than 2 values%s" % (path, c.index, expect))
        c.res = float(np.median(np.diff(c.times))) or 1.0
    return cols, [h for _, h in header]


# ---------------------------------------------------------------- targets from the CSV
class Target:
    """What one CSV column says at capture times shifted by an offset."""

    def __init__(self, col):
        self.col = col
        kind, factor = col.unit or (None, 1000.0)  # unitless: the vendor's kW / kWh
        self.factor = factor
        v = col.values * factor
        self.res = col.res
        self.cumulative = False
        if col.kind == "power":
            self.t, self.v = col.times, v
        else:
            d = np.diff(v)
            self.cumulative = bool(len(d) and (d >= -1e-9).all() and v[-1] > v[0]
                                   and np.median(np.abs(v)) > 50 * (np.median(np.abs(d)) + 1e-12))
            if self.cumulative:
                self.t, self.v = col.times, v
            else:  # energy per row (interval): cumulate, at the end of each interval
                self.t = np.concatenate(([col.times[0]], col.times + self.res))
                self.v = np.concatenate(([0.0], np.cumsum(v)))

    def power_at(self, q):
        """Step lookup (the CSV repeats a value until it changes); NaN where rows are missing."""
        i = np.searchsorted(self.t, q, side="right") - 1
        ok = (i >= 0) & (q <= self.t[-1] + self.res)
        i = np.clip(i, 0, len(self.t) - 1)
        ok &= (q - self.t[i]) <= 2.5 * self.res
        return np.where(ok, self.v[i], np.nan)

    def energy_at(self, q):
        """Cumulative Wh by interpolation; NaN outside the CSV or across a gap of missing rows."""
        j = np.searchsorted(self.t, q, side="right")
        ok = (j >= 1) & (j < len(self.t))
        j = np.clip(j, 1, len(self.t) - 1)
        ok &= (self.t[j] - self.t[j - 1]) <= 1.5 * self.res
        return np.where(ok, np.interp(q, self.t, self.v), np.nan)


# ---------------------------------------------------------------- candidate fields
class Cand:
    __slots__ = ("off", "width", "order", "enc", "aliases")

    def __init__(self, off, width, order, enc):
        self.off, self.width, self.order, self.enc = off, width, order, enc
        self.aliases = []

    def name(self):
        order = {"be": "BE", "le": "LE"}[self.order] if self.width > 1 else ""
        rng = "%d" % self.off if self.width == 1 else "%d-%d" % (self.off, self.off + self.width - 1)
        return ("bytes %s %s %s" % (rng, order, self.enc)).replace("  ", " ")

    def as_dict(self):
        return {"offset": self.off, "width": self.width, "order": self.order if self.width > 1
                else "be", "encoding": self.enc}


def decode(U, width, enc):
    top = 1 << (8 * width - 1)
    full = 1 << (8 * width)
    if enc == "unsigned":
        return U
    if enc == "twos":
        return np.where(U >= top, U - full, U)
    if enc == "ones":
        return np.where(U >= top, U - (full - 1), U)
    if enc == "signmag":
        return np.where(U >= top, -(U - top), U)
    both = top | (top >> 1)
    return np.where(U & both == both, U - (full - 1), np.where(U >= top, -(U - top), U))


def candidates(B):
    """All distinct non-constant decodings of B (frames x bytes) -> ([Cand], X frames x cands).

    Identical value series are one candidate (the others become its aliases); the widest is kept,
    since a field bordered by always-zero bytes cannot be told from a wider one.
    """
    n, L = B.shape
    B = B.astype(np.int64)
    cands, cols, seen = [], [], {}
    for width in (4, 3, 2, 1):
        if width > L:
            continue
        for order in (("be", "le") if width > 1 else ("be",)):
            U = np.zeros((n, L - width + 1), dtype=np.int64)
            for k in range(width):
                shift = 8 * (width - 1 - k) if order == "be" else 8 * k
                U |= B[:, k:L - width + 1 + k] << shift
            neg = (U >= (1 << (8 * width - 1))).any(axis=0)
            for enc in ENCODINGS:
                V = decode(U, width, enc)
                for o in range(U.shape[1]):
                    if enc != "unsigned" and not neg[o]:
                        continue  # no top bit ever set: same as unsigned
                    v = V[:, o]
                    if v.min() == v.max():
                        continue
                    c = Cand(o, width, order, enc)
                    key = v.tobytes()
                    if key in seen:
                        seen[key].aliases.append(c)
                        continue
                    seen[key] = c
                    cands.append(c)
                    cols.append(v)
    X = np.array(cols, dtype=np.float64).T if cols else np.zeros((n, 0))
    return cands, X


def standardize(X):
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd == 0] = np.inf  # a constant column correlates with nothing
    return (X - mu) / sd


def masked_corr(Z, Y, M):
    """Pearson r of every column of Z (n x K) with every column of Y (n x O), over rows where M.

    -> K x O. Y must be 0 where M is 0.
    """
    n = M.sum(axis=0)
    n[n < 3] = np.nan
    Sx = Z.T @ M
    Sxx = (Z * Z).T @ M
    Sxy = Z.T @ Y
    Sy = Y.sum(axis=0)
    Syy = (Y * Y).sum(axis=0)
    cov = Sxy / n - Sx * Sy / n ** 2
    vx = Sxx / n - (Sx / n) ** 2
    vy = Syy / n - (Sy / n) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None))
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


# ---------------------------------------------------------------- the search
def corr_columns(Xs, y):
    """Pearson r of every column of Xs (n x K) with y (n)."""
    Z = standardize(Xs)
    yc = y - y.mean()
    sy = yc.std()
    if sy == 0 or len(y) < 3:
        return np.zeros(Xs.shape[1])
    return np.nan_to_num(Z.T @ (yc / sy) / len(y))


def power_fit(target, t, X, offsets):
    """Each offset's r for every candidate; the CSV's value at the frame's (shifted) time."""
    Z = standardize(X)
    Y = np.empty((X.shape[0], len(offsets)))
    for j, off in enumerate(offsets):
        Y[:, j] = target.power_at(t + off)
    M = np.isfinite(Y).astype(np.float64)
    Yc = np.where(M > 0, Y, 0.0)
    mean_y = Yc.sum() / max(M.sum(), 1)
    Yc = np.where(M > 0, Yc - mean_y, 0.0)
    return np.abs(masked_corr(Z, Yc, M))


def energy_points(target):
    """CSV boundary times (CSV clock) at least ~60 s apart, with the Wh/s between them, and which
    spans are whole (no missing rows inside)."""
    m = max(1, int(math.ceil(60.0 / target.res)))
    T, C = target.t[::m], target.v[::m]
    dur = np.diff(T)
    rate = np.diff(C) / dur
    whole = np.ones(len(dur), dtype=bool) if target.cumulative else dur <= (m + 0.5) * target.res
    return T, rate, whole


def energy_rates(t, X, T, off, max_gap):
    """Every candidate counter interpolated at the CSV boundaries T (moved to the capture clock by
    off) -> per-span rates (spans x K) and which spans the frames cover."""
    q = T - off
    i = np.searchsorted(t, q, side="right") - 1
    ok = (i >= 0) & (i < len(t) - 1)
    i = np.clip(i, 0, len(t) - 2)
    ok &= (t[i + 1] - t[i]) <= max_gap
    gap = t[i + 1] - t[i]
    ok &= gap > 0
    w = ((q - t[i]) / np.where(gap > 0, gap, 1.0))[:, None]
    Xq = X[i] * (1 - w) + X[i + 1] * w
    rates = np.diff(Xq, axis=0) / np.diff(T)[:, None]
    return rates, ok[1:] & ok[:-1]


def _max_gap(t):
    """Frames further apart than this leave a hole: no interpolating across it."""
    return 3 * max(float(np.median(np.diff(t))), 1.0)


def energy_fit(target, t, X, offsets):
    T, rate, whole = energy_points(target)
    max_gap = _max_gap(t)
    R = np.zeros((X.shape[1], len(offsets)))
    for j, off in enumerate(offsets):
        rates, ok = energy_rates(t, X, T, off, max_gap)
        ok &= whole
        if ok.sum() >= 5:
            R[:, j] = corr_columns(rates[ok], rate[ok])
    return R


def search_column(target, kind, t, cands, X, offsets, top):
    power = kind == "power"
    fit = power_fit(target, t, X, offsets) if power else energy_fit(target, t, X, offsets)
    best_per_off = fit.max(axis=0) if fit.shape[0] else np.zeros(len(offsets))
    j = int(np.argmax(best_per_off))
    offset = float(offsets[j])
    if power:
        y = target.power_at(t + offset)
        Xs = X
    else:
        T, rate, whole = energy_points(target)
        Xs, ok = energy_rates(t, X, T, offset, _max_gap(t))
        y = np.where(ok & whole, rate, np.nan)
    ok = np.isfinite(y)
    y = y[ok]
    if ok.sum() < 5:
        return {"offset_s": offset, "samples": int(ok.sum()), "candidates": []}
    out = _rank(fit[:, j], Xs[ok], y, X, cands, power, top)
    return {"offset_s": offset, "samples": int(ok.sum()), "candidates": out,
            "offset_fit": round(float(best_per_off[j]), 4)}


def _rank(r, Xs, y, X, cands, power, top):
    """Candidates by score (r, and how well the best scale reproduces y); Xs: each candidate's
    values at y's samples."""
    spread = float(np.mean(np.abs(y - y.mean()))) or 1.0
    order = np.argsort(-r)[:max(300, top)]
    scales = np.array(SCALES + ([-s for s in SCALES] if power else []))
    results = []
    for ci in order:
        if r[ci] <= 0:
            break
        x = Xs[:, ci]
        errs = np.abs(np.outer(scales, x) - y).mean(axis=1)
        si = int(np.argmin(errs))
        err = float(errs[si])
        # Implausible: beyond 1 MW or 100 MWh, or a negative energy counter.
        big = (float(np.abs(X[:, ci]).max()) * abs(float(scales[si])) > (1e6 if power else 1e8)
               or (not power and float(X[:, ci].min()) < 0))
        results.append((float(r[ci]) - err / spread, float(r[ci]), float(scales[si]), err, cands[ci],
                        big))
    results = _break_ties(results, power)
    out = []
    for score, rr, scale, err, c, _ in results[:top]:
        d = c.as_dict()
        d.update({"name": c.name(), "score": round(score, 4), "r": round(rr, 4), "scale": scale,
                  "mean_abs_err": round(err, 3), "rel_err": round(err / spread, 4),
                  "aliases": [a.name() for a in c.aliases[:6]], "ties": ties.get(id(c), [])})
        out.append(d)
    return out


_CONST_BYTES = {}


ties = {}
TIE = 0.003  # scores closer than this differ by noise (e.g. one count at a 16-bit wrap)


def _break_ties(results, power):
    """Sort by score; among equal scores (the same series up to a constant: a counter whose high
    byte never changed, or a field shifted onto a neighbouring constant byte) prefer a plausible
    magnitude (< 1 MW, < 100 MWh, no negative counter), then a field without constant end bytes,
    then the wider one. The others in the tie are listed with the winner."""
    def rank(e):  # an implausible reading must fit clearly better to come first
        return e[0] - (0.01 if e[5] else 0)
    results.sort(key=lambda e: -rank(e))
    out, i = [], 0
    ties.clear()
    while i < len(results):
        j = i
        while j < len(results) and rank(results[i]) - rank(results[j]) < TIE:
            j += 1
        group = sorted(results[i:j], key=lambda e: (e[5], _const_ends(e[4]), -e[4].width))
        head = group[0][4]
        ties[id(head)] = [e[4].name() for e in group[1:]
                          if (e[4].off, e[4].width) != (head.off, head.width)][:6]
        out += group
        i = j
    return out


def _const_ends(c):
    """1 if the field's top byte is a non-zero constant or its bottom byte a constant: then it is
    most likely a real field shifted onto a neighbouring constant byte."""
    be = c.order == "be" or c.width == 1
    top = c.off if be else c.off + c.width - 1
    bottom = c.off + c.width - 1 if be else c.off
    v = _CONST_BYTES.get(top)
    return 1 if (v is not None and v != 0) or (c.width > 1 and bottom in _CONST_BYTES) else 0


# ---------------------------------------------------------------- reports on the bytes themselves
def constant_bytes(B):
    const = {}
    for i in range(B.shape[1]):
        col = B[:, i]
        if col.min() == col.max():
            const[i] = int(col[0])
    return const


def _ranges(idx):
    out = []
    for i in sorted(idx):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def counters(B, t):
    """Unsigned fields that never decrease and change often: clocks, sequence numbers, energy."""
    n, L = B.shape
    Bi = B.astype(np.int64)
    found = []
    for width in (4, 3, 2, 1):
        for order in (("be", "le") if width > 1 else ("be",)):
            for o in range(L - width + 1):
                v = np.zeros(n, dtype=np.int64)
                for k in range(width):
                    v |= Bi[:, o + k] << (8 * (width - 1 - k) if order == "be" else 8 * k)
                d = np.diff(v)
                if (d < 0).any() or (d > 0).mean() < 0.2:
                    continue
                changing = sum(1 for k in range(o, o + width) if k not in _CONST_BYTES)
                found.append((_const_ends(Cand(o, width, order, "unsigned")), -changing, -width,
                              o, order, v))
    found.sort(key=lambda f: f[:3])
    picked, used = [], set()
    # No overlaps; real fields before ones shifted onto a neighbour's constant bytes, then the
    # one with the most changing bytes (a counter's low byte changes), then the widest.
    for _, _, width, o, order, v in found:
        width = -width
        span = set(range(o, o + width))
        if span & used:
            continue
        used |= span
        c = Cand(o, width, order, "unsigned")
        rate = float((v[-1] - v[0]) / (t[-1] - t[0])) if t[-1] > t[0] else 0.0
        picked.append(dict(c.as_dict(), name=c.name(), per_second=round(rate, 3)))
    return picked


# ---------------------------------------------------------------- main
def load_frames(path):
    frames = cf.read_capture(path)
    frames.sort(key=lambda f: f.time)
    lengths = {}
    for f in frames:
        lengths[len(f.payload)] = lengths.get(len(f.payload), 0) + 1
    L = max(lengths, key=lambda k: lengths[k])
    kept, last = [], None
    for f in frames:
        if len(f.payload) != L:
            continue
        if last is not None and f.payload == last.payload and secs(f.time) - secs(last.time) < 3:
            continue  # the MGM sometimes sends a reading twice
        kept.append(f)
        last = f
    if len(kept) < 10:
        raise InputError("%s: only %d reading frames of the common length %d; at least 10 are "
                         "needed (record longer)" % (path, len(kept), L))
    return kept, lengths, L


def tz_shift(t, cols):
    """A whole quarter-hour shift when the capture (e.g. UTC) and the CSV (local time) differ."""
    c0 = min(c.times[0] for c in cols)
    c1 = max(c.times[-1] for c in cols)

    def inside(shift):
        return int(((t + shift >= c0) & (t + shift <= c1)).sum())
    if inside(0) >= len(t) // 2:
        return 0.0
    best = max(range(-14 * 4, 14 * 4 + 1), key=lambda q: inside(q * 900.0))
    if inside(best * 900.0) == 0:
        raise InputError("the capture (%s to %s) and the CSV (%s to %s) do not overlap in time"
                         % (_fmt(t[0]), _fmt(t[-1]), _fmt(c0), _fmt(c1)))
    return best * 900.0


def _fmt(s):
    return (EPOCH + datetime.timedelta(seconds=float(s))).isoformat(sep=" ", timespec="seconds")


def analyse(capture, csvs, kinds=None, top=5, max_offset=120):
    frames, lengths, L = load_frames(capture)
    t = np.array([secs(f.time) for f in frames])
    B = np.array([bytearray(f.payload) for f in frames], dtype=np.uint8)
    cols, headers = [], []
    for p in csvs:
        c, h = read_csv(p)
        cols += c
        headers += h
    if kinds:
        if len(kinds) > len(cols):
            raise InputError("--column names %d columns but the CSV has %d value column(s)"
                             % (len(kinds), len(cols)))
        cols = cols[:len(kinds)]
        for c, k in zip(cols, kinds):
            c.kind = k
    else:
        for c in cols:
            c.kind = c.unit[0] if c.unit else "power"
    shift = tz_shift(t, cols)
    offsets = shift + np.arange(-max_offset, max_offset + 1, 1.0)
    const = constant_bytes(B)
    _CONST_BYTES.clear()
    _CONST_BYTES.update(const)
    cands, X = candidates(B)
    report = {"capture": capture, "frames": len(frames), "payload_length": L,
              "other_lengths": {str(k): v for k, v in lengths.items() if k != L},
              "versions": sorted({f.mgm_version for f in frames if f.mgm_version is not None}),
              "csv_header": headers, "timezone_shift_s": shift, "columns": []}
    explained = set()
    for c in cols:
        tg = Target(c)
        res = search_column(tg, c.kind, t, cands, X, offsets, top)
        res.update({"kind": c.kind, "csv": c.source, "csv_column": c.index,
                    "csv_resolution_s": c.res, "unit": "W" if c.kind == "power" else "Wh",
                    "csv_cumulative": tg.cumulative})
        report["columns"].append(res)
        if res["candidates"] and res["candidates"][0]["score"] >= 0.5:
            b = res["candidates"][0]
            explained |= set(range(b["offset"], b["offset"] + b["width"]))
    return _bytes_report(report, B, t, L, const, explained)


def _bytes_report(report, B, t, L, const, explained):
    # Runs of zeros apart from the non-zero constants, which are the interesting ones.
    report["constant_bytes"] = [{"from": a, "to": b, "hex": bytes(const[i] for i in range(a, b + 1)).hex()}
                                for zero in (True, False)
                                for a, b in _ranges([i for i in const if (const[i] == 0) == zero])]
    report["constant_bytes"].sort(key=lambda r: r["from"])
    report["counters"] = counters(B, t)
    for k in report["counters"]:
        explained |= set(range(k["offset"], k["offset"] + k["width"]))
    changing = [i for i in range(L) if i not in const and i not in explained]
    report["unexplained_bytes"] = [[a, b] for a, b in _ranges(changing)]
    return report


# ---------------------------------------------------------------- the module's log as the truth
SIMPLE_METERING = 0x0702
TRUTH = (("power", "watts"), ("energy", "import_wh"), ("returned", "export_wh"))


def log_truth(capture):
    """The capture's Simple Metering received-message lines, decoded by the firmware's ZCL decoder
    -> ([(seconds, Reading)], lines in all, unreadable ones)."""
    lines = cf.read_rx(capture)
    out, bad = [], 0
    for ln in lines:
        z = bytearray(ln.zcl)
        if ln.cluster != SIMPLE_METERING or len(z) < 3 or z[0] & 0x0F != 0x08 or z[2] != 0x01:
            continue  # not a Read Attributes Response from the meter
        z[0] = 0x18  # FC bit 4 (default response) does not change the records
        try:
            out.append((secs(ln.time), decoders.decode(bytes(z))))
        except decoders.DecodeError:
            bad += 1
    return out, len(lines), bad


def analyse_log(capture, top=5, max_pair_s=None):
    """find_fields with the module's own log lines (in the same capture) as the ground truth."""
    frames, lengths, L = load_frames(capture)
    t = np.array([secs(f.time) for f in frames])
    B = np.array([bytearray(f.payload) for f in frames], dtype=np.uint8)
    truth, nlines, bad = log_truth(capture)
    if len(truth) < 5:
        raise InputError(
            "%s: %d decodable Simple Metering received-message lines (%d received-message records in "
            "all, %d unreadable); at least 5 are needed as ground truth.\n  Record with MGM log mode "
            "on (the module's `loglevel 20`), so the capture holds records like\n            %s\n"
            "  or give the vendor's CSV export instead of --truth log"
            % (capture, len(truth), nlines, bad, RX_SAMPLE))
    tt = np.array([x[0] for x in truth])
    if max_pair_s is None:
        gap = float(np.median(np.diff(t))) if len(t) > 1 else 2.0
        max_pair_s = min(10.0, gap / 2)
    j = np.clip(np.searchsorted(tt, t), 1, len(tt) - 1) if len(tt) > 1 else np.zeros(len(t), int)
    if len(tt) > 1:
        j = np.where(np.abs(tt[j - 1] - t) <= np.abs(tt[j] - t), j - 1, j)
    paired = np.abs(tt[j] - t) <= max_pair_s
    const = constant_bytes(B)
    _CONST_BYTES.clear()
    _CONST_BYTES.update(const)
    cands, X = candidates(B)
    report = {"capture": capture, "frames": len(frames), "payload_length": L,
              "other_lengths": {str(k): v for k, v in lengths.items() if k != L},
              "versions": sorted({f.mgm_version for f in frames if f.mgm_version is not None}),
              "truth": "log", "log_readings": len(truth), "log_unreadable": bad,
              "paired": int(paired.sum()), "max_pair_s": max_pair_s,
              "csv_header": [], "timezone_shift_s": 0.0, "columns": []}
    explained = set()
    res_s = float(np.median(np.diff(tt))) if len(tt) > 1 else 0.0
    for kind, attr in TRUTH:
        y = np.array([float(getattr(truth[k][1], attr)) if p and getattr(truth[k][1], attr) is not None
                      else np.nan for k, p in zip(j, paired)])
        ok = np.isfinite(y)
        col = {"kind": kind, "truth": "log", "csv": "the MGM111's log lines (cluster 0x0702)",
               "csv_column": 0, "csv_resolution_s": res_s, "unit": "W" if kind == "power" else "Wh",
               "csv_cumulative": kind != "power", "offset_s": 0.0, "samples": int(ok.sum()),
               "candidates": []}
        if ok.sum() >= 5 and float(np.ptp(y[ok])) > 0:
            r = corr_columns(X[ok], y[ok])
            col["candidates"] = _rank(np.abs(r) if kind == "power" else r, X[ok], y[ok], X, cands,
                                      kind == "power", top)
        report["columns"].append(col)
        if col["candidates"] and col["candidates"][0]["score"] >= 0.5:
            b = col["candidates"][0]
            explained |= set(range(b["offset"], b["offset"] + b["width"]))
    return _bytes_report(report, B, t, L, const, explained)


RX_SAMPLE = ('{"t": "2023-12-08T08:55:46Z", "cmd": "rx", "cluster": "0702", "hex": "18b70100000025...", '
             '"mgm_version": 6}')


def _span(a, b):
    return "%d" % a if a == b else "%d-%d" % (a, b)


def print_report(rep, out=sys.stdout):
    w = out.write
    w("%s: %d reading frames of %d bytes" % (rep["capture"], rep["frames"], rep["payload_length"]))
    if rep["other_lengths"]:
        w(" (ignored other lengths: %s)"
          % ", ".join("%s bytes x%d" % kv for kv in rep["other_lengths"].items()))
    if rep["versions"]:
        w(", MGM version %s" % "/".join(str(v) for v in rep["versions"]))
    w("\n")
    if rep["timezone_shift_s"]:
        w("clocks differ by a time zone: CSV = capture %+.2f h\n" % (rep["timezone_shift_s"] / 3600))
    if rep.get("truth") == "log":
        w("ground truth: %d readings decoded from the MGM111's log lines (%d unreadable); %d frames "
          "paired with one within %gs\n" % (rep["log_readings"], rep["log_unreadable"], rep["paired"],
                                            rep["max_pair_s"]))
    for col in rep["columns"]:
        if col.get("truth") == "log":
            w("\n== %s (%s, from the MGM111's log lines, over %d samples)\n"
              % (col["kind"], col["unit"], col["samples"]))
        else:
            w("\n== %s (%s column %d, %s%s, every %gs): best clock offset CSV = capture %+gs "
              "(over %d samples)\n" % (col["kind"], col["csv"], col["csv_column"], col["unit"],
                                       ", cumulative" if col.get("csv_cumulative") else "",
                                       col["csv_resolution_s"], col["offset_s"], col["samples"]))
        if not col["candidates"]:
            w("   nothing matches\n")
        unit = col["unit"] + ("" if col["kind"] == "power" or col.get("truth") == "log" else "/s")
        for i, c in enumerate(col["candidates"], 1):
            w("%3d. %-40s x %-7g r=%.4f  mean |err| %.3g %s (%.1f%%)  score %.3f\n"
              % (i, c["name"], c["scale"], c["r"], c["mean_abs_err"], unit, 100 * c["rel_err"],
                 c["score"]))
            if c["aliases"]:
                w("       same values as: %s\n" % "; ".join(c["aliases"]))
            if c["ties"]:
                w("       fits as well (a byte that never changed cannot be placed): %s\n"
                  % "; ".join(c["ties"]))
    w("\nconstant bytes: %s\n" % (", ".join(
        _span(r["from"], r["to"]) + "=" + r["hex"] for r in rep["constant_bytes"]) or "none"))
    w("counter-like fields (never decrease): %s\n" % (", ".join(
        "%s (%+g/s)" % (k["name"].replace(" unsigned", ""), k["per_second"])
        for k in rep["counters"]) or "none"))
    w("changing bytes nothing above explains: %s\n" % (", ".join(
        _span(a, b) for a, b in rep["unexplained_bytes"]) or "none"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("csv", nargs="*", help="the vendor's CSV export(s) (not with --truth log)")
    ap.add_argument("--truth", choices=("csv", "log"), help="log: the capture's own received-message "
                    "lines (MGM log mode) are the ground truth; no CSV needed")
    ap.add_argument("--max-pair-s", type=float, help="--truth log: a frame and a log reading further "
                    "apart are not paired (default: half the polling interval, at most 10)")
    ap.add_argument("--column", nargs="+", choices=KINDS,
                    help="what the CSV value columns hold, in order")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--max-offset-s", type=int, default=120)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    truth = args.truth or ("csv" if args.csv else None)
    if truth is None:
        ap.error("give the vendor's CSV export(s), or --truth log to use the module's own log lines "
                 "recorded in the capture (MGM log mode)")
    if truth == "log" and args.csv:
        ap.error("--truth log takes the ground truth from the capture: no CSV")
    if truth == "csv" and not args.csv:
        ap.error("--truth csv needs the vendor's CSV export(s)")
    try:
        if truth == "log":
            rep = analyse_log(args.capture, args.top, args.max_pair_s)
        else:
            rep = analyse(args.capture, args.csv, args.column, args.top, args.max_offset_s)
    except (InputError, cf.CaptureError) as e:
        sys.stderr.write("find_fields: %s\n" % e)
        return 2
    if args.json:
        json.dump(rep, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_report(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
