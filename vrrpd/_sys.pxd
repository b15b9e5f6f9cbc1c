# Linux batch-socket declarations shared by the engine (adverts) and the
# effects (announcements): sendmmsg(2) and its message headers.  Extern
# declarations only, so this .pxd has no module of its own; Cython finds it
# by its dotted name, vrrpd._sys.
cdef extern from "<sys/uio.h>" nogil:
    cdef struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    cdef struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int sendmmsg(int, mmsghdr*, unsigned int, int)
    enum:
        MSG_DONTWAIT
