#!/usr/bin/env python3
"""The official OpenAI and Anthropic SDKs against a Drover data plane with the auth module on.

Environment:
  DROVER_DATAPLANE  the data plane's base URL (e.g. http://127.0.0.1:8080)
  DROVER_KEY        a Drover key whose allow-list is model "m" only

Model "m" must be routable and model "other" must exist but not be allowed for the key. Checks
that each SDK raises its authentication error for a bad key, its permission error for a model
the key may not use, and gets an answer for "m" with the key. Prints one line per check, and
exits with status 1 and the unexpected results on stderr unless every check passed.
"""

import os
import sys

import anthropic
import openai

DATAPLANE = os.environ["DROVER_DATAPLANE"].rstrip("/")
KEY = os.environ["DROVER_KEY"]
# Shaped like a Drover key, but never issued.
BAD_KEY = "drv_" + "x" * 43
TIMEOUT = 30.0

failures = []


def openai_chat(api_key, model):
    client = openai.OpenAI(
        base_url=f"{DATAPLANE}/v1", api_key=api_key, max_retries=0, timeout=TIMEOUT
    )
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content


def anthropic_message(api_key, model):
    client = anthropic.Anthropic(
        base_url=DATAPLANE, api_key=api_key, max_retries=0, timeout=TIMEOUT
    )
    reply = client.messages.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    return "".join(block.text for block in reply.content if block.type == "text")


def openai_code(error):
    """The `error.code` of an OpenAI error body."""
    return error.code


def anthropic_type(error):
    """The `error.type` of an Anthropic error body."""
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"].get("type")
    return None


def expect_error(label, call, error_class, status, detail_of, detail):
    """`call()` must raise `error_class` with HTTP `status`, and `detail_of(error) == detail`."""
    name = f"{error_class.__module__.split('.')[0]}.{error_class.__name__}"
    try:
        result = call()
    except error_class as error:
        got = detail_of(error)
        if error.status_code != status or got != detail:
            failures.append(
                f"{label}: {name} with HTTP {error.status_code} and {got!r}, "
                f"expected HTTP {status} and {detail!r}: {error}"
            )
            return
        print(f"{label}: {name} (HTTP {status}, {detail})")
    except Exception as error:  # noqa: BLE001 - any other outcome is the failure to report
        failures.append(
            f"{label}: expected {name}, got {type(error).__module__}.{type(error).__name__}: "
            f"{error}"
        )
    else:
        failures.append(f"{label}: expected {name}, got an answer: {result!r}")


def expect_answer(label, call):
    """`call()` must return non-empty text."""
    try:
        text = call()
    except Exception as error:  # noqa: BLE001 - reported as the failure
        failures.append(f"{label}: expected an answer, got {type(error).__name__}: {error}")
        return
    if not text:
        failures.append(f"{label}: expected an answer, got empty content {text!r}")
        return
    print(f"{label}: answer {text!r}")


expect_error(
    "openai, bad key",
    lambda: openai_chat(BAD_KEY, "m"),
    openai.AuthenticationError,
    401,
    openai_code,
    "invalid_api_key",
)
expect_error(
    "anthropic, bad key",
    lambda: anthropic_message(BAD_KEY, "m"),
    anthropic.AuthenticationError,
    401,
    anthropic_type,
    "authentication_error",
)
expect_error(
    "openai, key for m, model other",
    lambda: openai_chat(KEY, "other"),
    openai.PermissionDeniedError,
    403,
    openai_code,
    "model_not_allowed",
)
expect_error(
    "anthropic, key for m, model other",
    lambda: anthropic_message(KEY, "other"),
    anthropic.PermissionDeniedError,
    403,
    anthropic_type,
    "permission_error",
)
expect_answer("openai, key for m, model m", lambda: openai_chat(KEY, "m"))
expect_answer("anthropic, key for m, model m", lambda: anthropic_message(KEY, "m"))

if failures:
    sys.exit("FAILED:\n" + "\n".join(failures))
print("all checks passed")
