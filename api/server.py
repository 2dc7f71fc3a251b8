"""The standalone service behind ``confledger serve``: a FastAPI app around one config source."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from confledger import __version__
from confledger.api.docs import add_index, add_offline_docs
from confledger.api.errors import internal_error_handler, routing_error_handler
from confledger.api.lifecycle import ConfigLifecycle, setup_configuration_lifecycle
from confledger.api.settings import Settings
from confledger.store.errors import ModelImportError

__all__ = [
    "ModelImportError",
    "create_app",
    "import_model",
    "import_validators",
]

logger = logging.getLogger(__name__)


def import_model(reference: str, app_dir: Path = Path(".")) -> type[BaseModel]:
    """Import ``module:Class`` the way uvicorn imports an app: ``app_dir`` first on the import path."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ModelImportError(f"--model must look like module:Class, got {reference!r}")
    directory = str(Path(app_dir).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelImportError(f"cannot import module {module_name!r} for --model: {exc}") from exc
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ModelImportError(f"module {module_name!r} has no attribute {attribute!r}")
    if not (isinstance(found, type) and issubclass(found, BaseModel)):
        raise ModelImportError(f"{reference} is not a pydantic BaseModel subclass")
    return found


def import_validators(model: type[BaseModel]) -> list[Any]:
    """A model's module may export ``VALIDATORS``: the custom validators that go with it."""
    module = sys.modules.get(model.__module__)
    validators = getattr(module, "VALIDATORS", None)
    return list(validators) if validators else []


def create_app(
    settings: Settings, *, model: type[BaseModel] | None = None
) -> tuple[FastAPI, ConfigLifecycle]:
    """The app ``confledger serve`` runs: the config API, health and metrics, docs if enabled."""
    if model is None and settings.model:
        model = import_model(settings.model, settings.app_dir)
    docs = settings.docs
    app = FastAPI(
        title="confledger",
        version=__version__,
        description="Event-sourced configuration store with zero-downtime reloading.",
        # /docs is served below from assets installed with confledger (no CDN: it works offline).
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # A trailing slash is a 404 like any other unknown path: Starlette would answer 307, before any
        # token is asked for, to a Location it builds from the client's own Host header.
        redirect_slashes=False,
    )
    if docs:
        add_offline_docs(app)
    add_index(app, docs=docs)
    # The settings whole: every one of them is a serve option, and one left out here would be read from
    # the environment again, the option given on the command line dropped.
    lifecycle = setup_configuration_lifecycle(
        app,
        config_model=model,
        config_source=settings.config,
        validators=import_validators(model) if model is not None else [],
        settings=settings,
    )
    # Every path of this app is confledger's, so the router's own 404 and 405 carry a code as well, and
    # so does a 500 nothing else answered.
    app.add_exception_handler(StarletteHTTPException, routing_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
    return app, lifecycle
