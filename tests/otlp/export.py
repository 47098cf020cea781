"""Exports GenAI spans to ingestd the way an instrumented application does.

The OpenTelemetry Python SDK with its OTLP/HTTP protobuf exporter, configured
only by the standard environment variables: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES (and, when the caller
sets it, OTEL_EXPORTER_OTLP_COMPRESSION). The spans are set up as
instrumentations set them:

- "chat gpt-4o": the current GenAI conventions (gen_ai.provider.name,
  gen_ai.usage.input_tokens/output_tokens, cache read and creation, reasoning);
- "chat claude": the older gen_ai.system + gen_ai.usage.prompt_tokens;
- "openai.chat": OpenLLMetry's llm.usage.* spelling;
- "chat claude-haiku": cache reads and writes reported apart from the input
  count (as Anthropic's API counts them), so they are added to it;
- "POST /checkout": the parent, a span without usage.

The finished spans are exported `--exports N` times (N > 1: an exporter's
retry or a re-export). Prints one JSON object: each export's result and each
span's ids and times.
"""

import argparse
import json

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

parser = argparse.ArgumentParser()
parser.add_argument("--exports", type=int, default=1)
parser.add_argument("--user", default="user-7")
args = parser.parse_args()

memory = InMemorySpanExporter()
provider = TracerProvider()  # the resource from OTEL_RESOURCE_ATTRIBUTES
provider.add_span_processor(SimpleSpanProcessor(memory))
tracer = provider.get_tracer("ingestd-tests", "1.0")

with tracer.start_as_current_span("POST /checkout", kind=trace.SpanKind.SERVER) as root:
    root.set_attribute("http.request.method", "POST")
    with tracer.start_as_current_span("chat gpt-4o", kind=trace.SpanKind.CLIENT) as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 300,
                "gen_ai.usage.cache_read.input_tokens": 400,
                "gen_ai.usage.cache_creation.input_tokens": 100,
                "gen_ai.usage.reasoning.output_tokens": 120,
                "user.id": args.user,
            }
        )
    with tracer.start_as_current_span("chat claude", kind=trace.SpanKind.CLIENT) as span:
        span.set_attributes(
            {
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4-5",
                "gen_ai.usage.prompt_tokens": 50,
                "gen_ai.usage.completion_tokens": 20,
            }
        )
    with tracer.start_as_current_span("openai.chat", kind=trace.SpanKind.CLIENT) as span:
        span.set_attributes(
            {
                "gen_ai.system": "OpenAI",
                "gen_ai.request.model": "gpt-4o-mini",
                "llm.request.type": "chat",
                "llm.usage.prompt_tokens": 30,
                "llm.usage.completion_tokens": 12,
                "llm.usage.total_tokens": 42,
            }
        )
    with tracer.start_as_current_span("chat claude-haiku", kind=trace.SpanKind.CLIENT) as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "anthropic",
                "gen_ai.request.model": "claude-haiku-4-5",
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.output_tokens": 5,
                "gen_ai.usage.cache_read.input_tokens": 60,
                "gen_ai.usage.cache_creation.input_tokens": 40,
            }
        )

spans = memory.get_finished_spans()
exporter = OTLPSpanExporter()
results = [exporter.export(spans).name for _ in range(args.exports)]
exporter.shutdown()
print(
    json.dumps(
        {
            "results": results,
            "spans": {
                s.name: {
                    "trace_id": format(s.context.trace_id, "032x"),
                    "span_id": format(s.context.span_id, "016x"),
                    "start": s.start_time,
                    "end": s.end_time,
                }
                for s in spans
            },
        }
    )
)
