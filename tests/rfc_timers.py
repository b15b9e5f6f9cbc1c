"""RFC 3768 / RFC 5798 section 6.1 timers in seconds, as the oracle of the
namespace failover tests, and the slack those tests allow for the notify
fifo's delivery."""


SLACK = 0.020


def skew_time(version: int, priority: int, advert_int: float) -> float:
    if version == 2:
        return (256 - priority) / 256          # RFC 3768 6.1: seconds
    return (256 - priority) * advert_int / 256  # RFC 5798 6.1: of Master_Adver_Interval


def master_down_interval(version: int, priority: int, advert_int: float) -> float:
    return 3 * advert_int + skew_time(version, priority, advert_int)
