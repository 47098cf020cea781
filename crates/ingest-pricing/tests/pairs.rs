//! Matching against the shipped snapshot: (provider, model, version) as
//! clients send them, each with the catalog key written by hand (SPEC §9;
//! docs/pricing.md, "Matching"). Providers are given trimmed and
//! lower-cased, as validation stores them (SPEC §1).

use ingest_pricing::{Index, Providers, Rates};

fn index() -> Index<Rates> {
    let parsed = ingest_pricing::catalog::snapshot().unwrap();
    Index::new(Providers::builtin(), parsed.entries.into_iter().map(|e| (e.key, e.provider, e.rates)))
}

#[test]
fn real_pairs_match_the_expected_catalog_keys() {
    let index = index();
    #[rustfmt::skip]
    let pairs: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        // OpenAI
        ("openai", "gpt-4o", None, Some("gpt-4o")),
        ("openai", "gpt-4o", Some("2024-05-13"), Some("gpt-4o-2024-05-13")),
        ("openai", "gpt-4o-mini-2024-07-18", None, Some("gpt-4o-mini-2024-07-18")),
        ("openai", "o3-mini", None, Some("o3-mini")),
        ("openai", "text-embedding-3-small", None, Some("text-embedding-3-small")),
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme::AbC123", None, Some("ft:gpt-4o-mini-2024-07-18")),
        ("openai", "ft:gpt-4o:acme:support-bot:9xYz", None, Some("gpt-4o")),
        // Anthropic
        ("anthropic", "claude-sonnet-4-5", None, Some("claude-sonnet-4-5")),
        ("anthropic", "claude-sonnet-4-5-20250929", None, Some("claude-sonnet-4-5-20250929")),
        // Azure OpenAI, as the SDK and as OpenTelemetry name it
        ("azure", "gpt-4o", None, Some("azure/gpt-4o")),
        ("azure.ai.openai", "gpt-4o-mini", None, Some("azure/gpt-4o-mini")),
        ("azure", "text-embedding-3-small", None, Some("azure/text-embedding-3-small")),
        // Bedrock model ids, cross-region inference profiles
        ("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", None, Some("anthropic.claude-3-5-sonnet-20240620-v1:0")),
        ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", None, Some("us.anthropic.claude-sonnet-4-5-20250929-v1:0")),
        ("aws.bedrock", "amazon.nova-lite-v1:0", None, Some("amazon.nova-lite-v1:0")),
        ("aws.bedrock", "meta.llama3-70b-instruct-v1:0", None, Some("meta.llama3-70b-instruct-v1:0")),
        // Vertex AI
        ("vertex_ai", "claude-sonnet-4-5@20250929", None, Some("vertex_ai/claude-sonnet-4-5@20250929")),
        ("gcp.vertex_ai", "claude-sonnet-4-5", Some("20250929"), Some("vertex_ai/claude-sonnet-4-5@20250929")),
        ("vertex_ai", "gemini-2.5-pro", None, Some("gemini-2.5-pro")),
        // Gemini API
        ("gemini", "gemini-2.5-pro", None, Some("gemini/gemini-2.5-pro")),
        ("gcp.gemini", "gemini-2.5-flash", None, Some("gemini/gemini-2.5-flash")),
        // Mistral
        ("mistral", "mistral-large-latest", None, Some("mistral/mistral-large-latest")),
        ("mistral_ai", "codestral-latest", None, Some("mistral/codestral-latest")),
        // Groq, DeepSeek, xAI, Alibaba, Together, Fireworks, watsonx
        ("groq", "openai/gpt-oss-120b", None, Some("groq/openai/gpt-oss-120b")),
        ("deepseek", "deepseek-chat", None, Some("deepseek/deepseek-chat")),
        ("deepseek", "deepseek-reasoner", None, Some("deepseek/deepseek-reasoner")),
        ("x_ai", "grok-4.3", None, Some("xai/grok-4.3")),
        ("dashscope", "qwen-turbo", None, Some("dashscope/qwen-turbo")),
        ("together_ai", "meta-llama/Llama-3.3-70B-Instruct-Turbo", None, Some("together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo")),
        ("fireworks", "accounts/fireworks/models/llama-v3p1-8b-instruct", None, Some("fireworks_ai/accounts/fireworks/models/llama-v3p1-8b-instruct")),
        ("ibm.watsonx.ai", "ibm/granite-3-8b-instruct", None, Some("watsonx/ibm/granite-3-8b-instruct")),
        // A client that names the provider in the model, LiteLLM-style
        ("gemini", "gemini/gemini-2.5-pro", None, Some("gemini/gemini-2.5-pro")),
        // Unknown: stored unpriced, never someone else's price
        ("my-gateway", "gpt-4o", None, None),
        ("groq", "gpt-4o", None, None),
        ("openai", "gpt-17-ultra", None, None),
        ("anthropic", "", None, None),
    ];
    assert!(pairs.iter().filter(|p| p.3.is_some()).count() >= 30);
    let mut wrong = Vec::new();
    for (provider, model, version, expected) in pairs {
        let found = index.find(provider, model, *version).map(|m| m.key);
        if found != *expected {
            wrong.push(format!("{provider} / {model} / {version:?}: expected {expected:?}, found {found:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn metric_labels_are_catalog_providers_or_other() {
    let index = index();
    assert_eq!(index.label("aws.bedrock"), "bedrock");
    assert_eq!(index.label("openai"), "openai");
    assert_eq!(index.label("fireworks_ai"), "fireworks_ai");
    assert_eq!(index.label("made-up-by-a-client-1234"), "other");
}
