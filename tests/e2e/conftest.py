"""End-to-end tests reuse the integration tier's real trainer service fixture."""

from tests.integration.conftest import start_trainer

__all__ = ["start_trainer"]
