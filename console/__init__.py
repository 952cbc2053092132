"""The audit console: a review store fed from `moderation.verdicts`, a queue filled by a sampling policy,
pages where signed-in reviewers label events with the keyboard, and live quality estimates."""
