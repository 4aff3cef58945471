"""Host-side typed client of the guest agent."""
