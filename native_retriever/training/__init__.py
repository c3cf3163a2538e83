"""Train projection heads on a user's own corpus and conversations (needs ``pip install native-retriever[train]``
only for loss plots)."""
