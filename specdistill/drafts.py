"""``--draft`` names and loading (``specdistill.models.drafts``), re-exported where users import them."""

from specdistill.models.drafts import (
    DEFAULT_DRAFT,
    MODEL_FREE,
    load_draft,
    package_head,
    resolve_draft,
    shipped_draft_dir,
)

__all__ = ["DEFAULT_DRAFT", "MODEL_FREE", "load_draft", "package_head", "resolve_draft", "shipped_draft_dir"]
