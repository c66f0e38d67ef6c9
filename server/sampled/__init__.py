"""Monte-Carlo on the base model: sampled certification (`/certify/sampled`, `certify`), the
hybrid fallback of `/certify?mode=hybrid` (`hybrid`), and the bounded, cancellable pool both
run on (`pool`; one pool each, so a burst of one cannot take the other's slots)."""
