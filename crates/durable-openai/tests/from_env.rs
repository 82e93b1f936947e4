//! `from_env` (its own test binary: it changes the process environment).

use durable_core::agent::LanguageModel;
use durable_core::ErrorKind;
use durable_openai::OpenAiModel;

#[test]
fn from_env_reads_key_base_url_and_model() {
    std::env::set_var("OPENAI_API_KEY", "sk-env-secret");
    std::env::set_var("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1/");
    std::env::set_var("OPENAI_MODEL", "llama3.2");
    let model = OpenAiModel::from_env().unwrap();
    assert_eq!(model.base_url(), "http://127.0.0.1:11434/v1");
    assert_eq!(model.model(), "llama3.2");
    assert_eq!(model.model_id(), "openai:llama3.2");
    assert!(!format!("{model:?}").contains("sk-env-secret"));

    std::env::set_var("OPENAI_BASE_URL", "");
    std::env::remove_var("OPENAI_MODEL");
    let err = OpenAiModel::from_env().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let model = durable_openai::OpenAiModelBuilder::from_env()
        .model("gpt-4o-mini")
        .build()
        .unwrap();
    assert_eq!(model.base_url(), durable_openai::DEFAULT_BASE_URL);
}
