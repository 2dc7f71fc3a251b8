"""confledger's read side: state folded from the event log."""
