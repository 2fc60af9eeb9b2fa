"""Reading the destination back: what ChartMogul holds now, compared with what it acknowledged."""
