"""What every spa package shares: the error type, atomic file steps, JSON reading, sha256.

The bottom room: it imports no other spa package, and spa_data, spa_model, spa_train and the
CLI all import it (docs/design.md, "Data safety").
"""
