"""The advert timer: a timerfd (timerfd_create(2)) armed at an absolute
CLOCK_MONOTONIC deadline, which the event loop polls like a socket.

Not loop.call_later: libuv computes its poll timeout from the time it cached
before the iteration's callbacks ran (uv_now), so a timer armed early in a
long pass of callbacks sleeps that much past its deadline.  The kernel wakes
the poll at a timerfd's deadline whatever the loop cached, to the microsecond
rather than libuv's millisecond."""

from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint64_t
from posix.time cimport timespec
from posix.unistd cimport close, read


cdef extern from "<sys/timerfd.h>" nogil:
    cdef struct itimerspec:
        timespec it_interval
        timespec it_value
    enum:
        CLOCK_MONOTONIC
        TFD_NONBLOCK
        TFD_CLOEXEC
        TFD_TIMER_ABSTIME
    int timerfd_create(int clockid, int flags)
    int timerfd_settime(int fd, int flags, const itimerspec* new_value, itimerspec* old_value)


cdef class DeadlineTimer:
    """One-shot timer at an absolute time.monotonic_ns() // 1000 (µs)."""
    cdef int _fd

    def __cinit__(self):
        self._fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if self._fd < 0:
            raise OSError(errno, "timerfd_create")

    def __dealloc__(self):
        if self._fd >= 0:
            close(self._fd)

    def fileno(self):
        return self._fd

    cdef int _set(self, int64_t sec, long nsec) except -1:
        cdef itimerspec spec
        spec.it_interval.tv_sec = 0
        spec.it_interval.tv_nsec = 0
        spec.it_value.tv_sec = sec
        spec.it_value.tv_nsec = nsec
        if timerfd_settime(self._fd, TFD_TIMER_ABSTIME, &spec, NULL) < 0:
            raise OSError(errno, "timerfd_settime")
        return 0

    def arm(self, int64_t deadline_us):
        """Readable once the clock reaches deadline_us (at once if past);
        replaces any earlier deadline and clears an unread expiry."""
        if deadline_us <= 0:
            self._set(0, 1)         # a zero it_value would disarm it
        else:
            self._set(deadline_us // 1000000, <long>(deadline_us % 1000000) * 1000)

    def disarm(self):
        self._set(0, 0)

    def expired(self):
        """Consume the expiry: -> whether the deadline was reached since the
        last arm() (False on a wake-up with nothing to read)."""
        cdef uint64_t count = 0
        cdef ssize_t n
        while True:
            n = read(self._fd, &count, sizeof(count))
            if n == sizeof(count):
                return count > 0
            if n < 0 and errno == EINTR:
                continue
            if n < 0 and errno == EAGAIN:
                return False
            raise OSError(errno, "timerfd read")
