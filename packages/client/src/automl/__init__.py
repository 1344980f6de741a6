"""The AutoML platform's Python client.

    import automl

    client = automl.Client()                    # AUTOML_BASE_URL, AUTOML_API_KEY, config file
    upload = client.datasets.upload("iris.csv", name="iris", target_column="species")
    run = client.workflows.run(workflow_id)
    job = client.jobs.wait(run.job, timeout=600)  # over the job's event stream
    for model in client.models.list():          # every page, following the cursor
        print(model.name)

``automl.AsyncClient`` has the same resource groups; its methods are awaited and its
lists iterated with ``async for``. Errors are :mod:`automl.errors` exceptions carrying
the API's ``code``, ``message``, ``details`` and ``status``. See docs/client.md.
"""

from automl import errors, models
from automl._client import AsyncClient, Client
from automl._core import AsyncPager, ServerEvent, SyncPager
from automl._model import Model, Page
from automl._version import __version__
from automl.config import Config, config_path, load_config, save_config
from automl.errors import (
    ApiError,
    AutomlError,
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    PaymentRequired,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
    WaitTimeout,
)
from automl.resources import Prediction

__all__ = [
    "ApiError",
    "AsyncClient",
    "AsyncPager",
    "AutomlError",
    "BadRequest",
    "Client",
    "Config",
    "ConfigError",
    "Conflict",
    "Forbidden",
    "JobFailed",
    "Model",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PaymentRequired",
    "Prediction",
    "RateLimited",
    "ServerError",
    "ServerEvent",
    "SyncPager",
    "TransportError",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationError",
    "WaitTimeout",
    "__version__",
    "config_path",
    "errors",
    "load_config",
    "models",
    "save_config",
]
