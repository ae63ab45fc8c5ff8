# MGM log mode (MeterSession.set_mgm_log, config meter.mgm_log): the module's received-message log
# lines as a second source of readings, for modules whose `r` layout nobody can decode (v4, v6), and
# a cross-check where both decode. Imported only while the mode is on (heap: most devices never need
# it); the counters it keeps are the session's attributes, so diagnostics read them in one place.
# All buffers are made once: a log line costs no heap.
import time

import decoders
import log
from decoders import mgm_log as mlog
from meter import SOURCE_BOTH, SOURCE_LOG, SOURCE_R

LOG_WAIT_ANSWERS = 3  # answered polls after `loglevel 20` without a received-message line: ignored
LOG_RESEND_ANSWERS = 10  # lines stopped for this many answered polls: the module may have restarted
PAIR_MS = 3000  # an `r` reading and a log reading this close (same ZCL seq) are one meter message
ZCL_MAX = 96  # ZCL bytes kept from a received-message line (a whole LINE_MAX line holds ~70)
_VIEWS_KEPT = 4
# A reading summary for the cross-check (a list, reused): when, ZCL seq, W, Wh in, Wh out, v2 net Wh.
_T, _SEQ, _W, _IN, _OUT, _NET = 0, 1, 2, 3, 4, 5


def _ms():
    return time.ticks_ms()


def _since(t):
    return time.ticks_diff(_ms(), t)


class LogMode:
    def __init__(self, session):
        self.s = session
        self.rx = mlog.RxLine(ZCL_MAX)
        self.zcl = bytearray(ZCL_MAX)  # the last decoded 0x0702 line's ZCL bytes
        self.n = -1
        self.views = {}
        self.reading = decoders.Reading()
        self.tmp = decoders.Reading()
        self.ms = None  # when the last log reading decoded
        self.published = True  # ... it went to on_reading
        self.paired = True  # ... it was cross-checked against an `r` reading
        self.r_sum = [None, None, None, None, None, None]  # the last decoded `r` reading
        self.r_paired = True
        self.r_state = 0  # the last `r` answer: 0 none yet, 1 decoded, 2 could not be decoded
        self.bad_logged = 0
        self.undec_logged = 0
        self.xlogged = 0

    # --- log lines (MeterSession._mgm_log, from the link's poll) ---
    def line(self, buf, a, b):
        s = self.s
        rx = self.rx
        try:
            n = mlog.parse(buf, a, b, rx)
        except decoders.DecodeError as e:
            s.rx_bad += 1
            self._rx_seen()  # a broken line still proves the module prints them
            s.last_rx_error = str(e)
            if s.rx_bad >= self.bad_logged * 10 or self.bad_logged == 0:
                self.bad_logged = s.rx_bad
                log.info("MGM log: a received-message line was not used (%d so far): %s" % (s.rx_bad, e))
            return
        if n < 0:
            s._other_line(buf, a, b)
            return
        s.rx_lines += 1
        self._rx_seen()
        if rx.cluster == mlog.KEY_ESTABLISHMENT:
            n = 5 if rx.mfg >= 0 else 3  # certificates and keys: the ZCL header only
            s.redacted_lines += 1
        if s.on_rx_line is not None:
            s.on_rx_line(rx.cluster, rx.view, n)
        if rx.is_reading():
            self._reading_line(n)

    def _rx_seen(self):
        s = self.s
        s._rx_since_level += 1
        s._answers_since_rx = 0
        if s.log_ignored:
            s.log_ignored = False
            log.info("MGM log: the MGM111 prints received-message lines now")

    def _view(self, n):
        v = self.views.get(n)
        if v is None:
            v = memoryview(self.zcl)[:n]
            if len(self.views) < _VIEWS_KEPT:
                self.views[n] = v
        return v

    def _reading_line(self, n):
        z = self.rx.zcl
        last = self.zcl
        if n == self.n:
            for i in range(n):
                if last[i] != z[i]:
                    break
            else:
                self.s.log_duplicates += 1  # the same meter message again
                return
        for i in range(n):
            last[i] = z[i]
        self.n = -1
        fc = last[0]
        last[0] = 0x18  # the decoder wants 18; FC bit 4 (default response) leaves the records alone
        try:
            decoders.decode(self._view(n), self.tmp)
        except decoders.DecodeError as e:
            s = self.s
            s.log_undecodable += 1
            if s.log_undecodable >= self.undec_logged * 10 or self.undec_logged == 0:
                self.undec_logged = s.log_undecodable
                log.info("MGM log: a Simple Metering line holds no usable reading: %s" % e)
            return
        finally:
            last[0] = fc
        self.n = n
        self.reading, self.tmp = self.tmp, self.reading
        self.ms = _ms()
        self.published = False
        self.paired = False
        sm = self.r_sum
        if not self.r_paired and sm[_T] is not None and time.ticks_diff(self.ms, sm[_T]) <= PAIR_MS \
                and (sm[_SEQ] is None or sm[_SEQ] == self.reading.seq):
            self._cross_check()  # the `r` reading of this meter message went out already
            return
        # Log lines stand in when the `r` answers cannot be read (or have stopped coming); while
        # they decode, the log line waits for its `r` twin instead (one message, one reading).
        if self.r_state == 2 or _since(self.s._r_answer_ms) >= self.s.stale_ms():
            self._deliver()

    def _deliver(self):
        s = self.s
        self.published = True
        s.log_readings += 1
        s._log_pub_ms = _ms()
        s._deliver(self.reading, self._view(self.n), SOURCE_LOG)

    # --- `r` answers (MeterSession._on_reading) ---
    def r_unreadable(self):
        """An `r` answer could not be decoded: the log line of this meter message, if it came
        first, stands in for it."""
        self.r_state = 2
        if self.ms is not None and not self.published and _since(self.ms) <= PAIR_MS:
            self._deliver()

    def r_read(self, r):
        """An `r` answer decoded into r. -> True if its meter message already went out from the
        log line (cross-checked): then it is not published a second time."""
        self.r_state = 1
        now = _ms()
        sm = self.r_sum
        sm[_T] = now
        sm[_SEQ] = r.seq
        sm[_W] = r.watts
        sm[_IN] = r.import_wh
        sm[_OUT] = r.export_wh
        sm[_NET] = r.net_wh
        self.r_paired = False
        if not self.paired and self.ms is not None and time.ticks_diff(now, self.ms) <= PAIR_MS and \
                (r.seq is None or r.seq == self.reading.seq):
            return self._cross_check() and self.published
        return False

    def _cross_check(self):
        # The `r` reading and the log reading of one meter message: the same quantities must agree
        # to within rounding. A disagreement is reported, never averaged: `r` keeps being published.
        s = self.s
        self.r_paired = True
        self.paired = True
        s._cross_ms = _ms()
        sm = self.r_sum
        lr = self.reading
        tol = decoders.scale(1, lr.multiplier, lr.divisor)
        if tol < 1:
            tol = 1
        what = None
        if sm[_W] is not None and lr.watts is not None and abs(sm[_W] - lr.watts) > tol:
            what = "power %d W vs %d W" % (sm[_W], lr.watts)
        elif sm[_IN] is not None and lr.import_wh is not None and abs(sm[_IN] - lr.import_wh) > tol:
            what = "energy consumed %d Wh vs %d Wh" % (sm[_IN], lr.import_wh)
        elif sm[_OUT] is not None and lr.export_wh is not None and abs(sm[_OUT] - lr.export_wh) > tol:
            what = "energy returned %d Wh vs %d Wh" % (sm[_OUT], lr.export_wh)
        elif sm[_NET] is not None and lr.import_wh is not None and lr.export_wh is not None and \
                abs(sm[_NET] - (lr.import_wh - lr.export_wh)) > 2 * tol:
            what = "net energy %d Wh vs %d Wh" % (sm[_NET], lr.import_wh - lr.export_wh)
        if what is None:
            s.cross_checked += 1
            return True
        s.cross_mismatches += 1
        if s.cross_mismatches >= self.xlogged * 10 or self.xlogged == 0:
            self.xlogged = s.cross_mismatches
            log.warn("the MGM111's answer to 'r' and its own log disagree about one meter message "
                     "(%s; %d times so far): the 'r' values are published, nothing is averaged"
                     % (what, s.cross_mismatches))
        return False

    # --- the session's task (MeterSession._check_log_mode, after each poll) ---
    def check(self):
        s = self.s
        if s._rx_since_level == 0:
            if s._answers_since_level >= LOG_WAIT_ANSWERS and not s.log_ignored:
                s.log_ignored = True
                log.warn("MGM log: " + self.text())
        elif s._answers_since_rx >= LOG_RESEND_ANSWERS:
            log.info("MGM log: no received-message line for %d answered polls (was the MGM111 "
                     "restarted?): sending 'loglevel 20' again" % s._answers_since_rx)
            s._level_due = True

    def text(self):
        """The mode's state in words (MeterSession.log_text)."""
        s = self.s
        if s._level_due:
            return "on: asking the MGM111 to print its received-message lines (loglevel 20)"
        if s.rx_lines == 0 and s.rx_bad:
            return ("on, but none of the MGM111's received-message lines could be read (%d tried): %s"
                    % (s.rx_bad, s.last_rx_error))
        if s.log_ignored:
            t = ("on, but the MGM111 (firmware v%s) printed no received-message line after "
                 "'loglevel 20' and %d answered polls (%d other log lines): it ignores loglevel or "
                 "does not print them" % (s.version, s._answers_since_level, s._lines_since_level))
            if self.r_state == 2:
                return t + ". Its answers to polls cannot be read either: no readings (record a " \
                    "capture: README, 'Reverse engineering')"
            return t + ". Readings come from its answers to polls only"
        if s.rx_lines == 0:
            return "on: waiting for the MGM111's first received-message line"
        return "on: %d received-message lines (%d unusable), %d readings from them" % (
            s.rx_lines, s.rx_bad, s.log_readings)


def source_text(s):
    """MeterSession.source in words."""
    src = s.source
    if src == SOURCE_R:
        return "the MGM111's answers to polls ('r')"
    if src == SOURCE_BOTH:
        return ("the MGM111's answers to polls ('r'), cross-checked against its own log lines: "
                "%d agreed, %d disagreed" % (s.cross_checked, s.cross_mismatches))
    if src == SOURCE_LOG:
        return ("the MGM111's own log lines (received messages of cluster 0x0702): its answers "
                "to polls are in a layout this firmware cannot read")
    return "no readings at the moment"
