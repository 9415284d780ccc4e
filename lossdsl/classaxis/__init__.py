"""Losses reduced over a class axis, met a block of classes at a time: the plan of per-block
partials and how they combine (`partials`), the block runner (`blocked`), classes sharded across
processes (`sharding`) and fused linear heads (`heads`)."""
