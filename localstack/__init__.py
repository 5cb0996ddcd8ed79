"""The local emulators: the AWS endpoint (moto's server, or a LocalStack already running) and its
bootstrap, and the fake LLM provider that speaks OpenAI's, Anthropic's and Groq's wire formats."""
