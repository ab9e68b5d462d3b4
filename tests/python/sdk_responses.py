#!/usr/bin/env python3
"""The official OpenAI SDK's Responses API and structured output against a Drover data plane.

Drives `openai` the way a new user and the OpenAI Agents SDK do, through routes to providers of
other formats, and checks what they rely on:

  responses.create         `output_text` is the answer, status `completed`, usage present
  responses.stream         the SDK's stream helper (which rejects a malformed event sequence)
                           accumulates the answer: the text deltas join to it, and so does
                           `get_final_response().output_text`
  responses.parse          `text_format=` a pydantic model: `output_parsed.input` is the prompt
  chat.completions.parse   `response_format=` a pydantic model: `message.parsed.input` is the
                           prompt, finish reason `stop`
  responses tool round trip  a function tool, the model's `function_call` item, then the earlier
                           output items and a `function_call_output` sent back, answered with text

Environment:
  DROVER_DATAPLANE  the data plane's base URL (e.g. http://127.0.0.1:8080)
  DROVER_KEY        any key (the auth module is off)

The data plane must route the models in ROUTES to providers answering like Drover's mocks
("mock reply to: <last message>", and `{"input": "<last message>"}` for structured output). A
route whose provider cannot do structured output itself takes the parse checks through the
model STRUCTURED names for it. Prints one line per check, and exits with status 1 and each
failure (with its traceback) on stderr unless every check passed.
"""

import json
import os
import sys
import traceback
from typing import Optional

import openai
import pydantic

DATAPLANE = os.environ["DROVER_DATAPLANE"].rstrip("/")
KEY = os.environ["DROVER_KEY"]
TIMEOUT = 30.0

# Model aliases the data plane routes, one per provider kind.
ROUTES = ["claude-sonnet-4-5", "claude-3-7-sonnet", "gemini-2.5-flash", "openai-compatible"]
# Where a route's structured-output checks go instead, if not to the route itself.
STRUCTURED = {"openai-compatible": "openai-compatible-json"}

INSTRUCTIONS = "Answer in one short sentence."
PROMPT = "Say hello to the tests"
ANSWER = f"mock reply to: {PROMPT}"
PARSE_PROMPT = "Name three colours"
TOOL_PROMPT = "What is the weather in Paris?"
TOOL_OUTPUT = "sunny and 21 degrees"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


class Echo(pydantic.BaseModel):
    """What the structured-output checks ask for."""

    input: str
    tags: Optional[list[str]] = None


class CheckFailed(Exception):
    """A check got an answer, but not the expected one."""


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


client = openai.OpenAI(
    base_url=f"{DATAPLANE}/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT
)
failures = []


def check(label, call):
    """Runs `call()`, which returns the line to print or raises; a raise is a failure."""
    try:
        line = call()
    except CheckFailed as error:
        failures.append(f"{label}: {error}")
        return
    except Exception:  # noqa: BLE001 - any error from the SDK is the failure to report
        failures.append(f"{label}: {traceback.format_exc()}")
        return
    print(f"{label}: {line}")


def responses_create(model):
    resp = client.responses.create(model=model, instructions=INSTRUCTIONS, input=PROMPT)
    expect(resp.output_text == ANSWER, f"output_text {resp.output_text!r}, expected {ANSWER!r}")
    expect(resp.status == "completed", f"status {resp.status!r}, expected 'completed'")
    usage = resp.usage
    expect(usage is not None, "no usage")
    expect(
        usage.input_tokens > 0
        and usage.output_tokens > 0
        and usage.total_tokens == usage.input_tokens + usage.output_tokens,
        f"usage {usage!r}",
    )
    return f"answer {resp.output_text!r} (completed, with usage)"


def responses_stream(model):
    deltas = []
    kinds = []
    with client.responses.stream(model=model, instructions=INSTRUCTIONS, input=PROMPT) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    streamed = "".join(deltas)
    expect(streamed == ANSWER, f"deltas join to {streamed!r}, expected {ANSWER!r}; events {kinds}")
    expect(
        final.output_text == ANSWER,
        f"final output_text {final.output_text!r}, expected {ANSWER!r}; events {kinds}",
    )
    expect(final.status == "completed", f"final status {final.status!r}; events {kinds}")
    expect(kinds[-1:] == ["response.completed"], f"last event is not response.completed: {kinds}")
    expect(final.usage is not None, f"final response has no usage; events {kinds}")
    return f"streamed {streamed!r} in {len(deltas)} deltas, final response the same"


def responses_parse(model):
    resp = client.responses.parse(model=model, input=PARSE_PROMPT, text_format=Echo)
    parsed = resp.output_parsed
    expect(isinstance(parsed, Echo), f"output_parsed {parsed!r}; output_text {resp.output_text!r}")
    expect(parsed.input == PARSE_PROMPT, f"output_parsed.input {parsed.input!r}")
    expect(resp.status == "completed", f"status {resp.status!r}, expected 'completed'")
    return f"output_parsed.input {parsed.input!r}"


def chat_parse(model):
    # `parse` left `beta` in openai 1.92; older versions only have it there.
    completions = getattr(client.chat.completions, "parse", None)
    if completions is None:
        completions = client.beta.chat.completions.parse
    completion = completions(
        model=model,
        messages=[
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": PARSE_PROMPT},
        ],
        response_format=Echo,
    )
    choice = completion.choices[0]
    parsed = choice.message.parsed
    expect(
        isinstance(parsed, Echo), f"message.parsed {parsed!r}; content {choice.message.content!r}"
    )
    expect(parsed.input == PARSE_PROMPT, f"message.parsed.input {parsed.input!r}")
    expect(choice.finish_reason == "stop", f"finish_reason {choice.finish_reason!r}")
    return f"message.parsed.input {parsed.input!r}, finish_reason 'stop'"


def tool_round_trip(model):
    question = {"role": "user", "content": TOOL_PROMPT}
    first = client.responses.create(model=model, input=[question], tools=[WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    expect(
        len(calls) == 1 and calls[0].name == "get_weather",
        f"expected one get_weather call, got output {first.output!r}",
    )
    call = calls[0]
    expect(call.call_id, f"function_call without call_id: {call!r}")
    arguments = json.loads(call.arguments)
    expect(isinstance(arguments, dict), f"arguments are not a JSON object: {call.arguments!r}")
    # The Agents SDK sends the output items back as `model_dump(exclude_unset=True)`.
    history = [question] + [item.model_dump(exclude_unset=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": TOOL_OUTPUT})
    second = client.responses.create(model=model, input=history, tools=[WEATHER_TOOL])
    expected = f"mock reply to: {TOOL_OUTPUT}"
    expect(
        second.output_text == expected,
        f"second answer {second.output_text!r}, expected {expected!r}; output {second.output!r}",
    )
    expect(
        not any(item.type == "function_call" for item in second.output),
        f"second answer calls a tool again: {second.output!r}",
    )
    expect(second.status == "completed", f"second status {second.status!r}")
    return f"get_weather called, then answer {second.output_text!r}"


for route in ROUTES:
    structured = STRUCTURED.get(route, route)
    check(f"{route}, responses.create", lambda: responses_create(route))
    check(f"{route}, responses.stream", lambda: responses_stream(route))
    check(f"{route}, responses.parse", lambda: responses_parse(structured))
    check(f"{route}, chat.completions.parse", lambda: chat_parse(structured))
    check(f"{route}, responses tool round trip", lambda: tool_round_trip(route))

if failures:
    sys.exit("FAILED:\n" + "\n".join(failures))
print("all checks passed")
