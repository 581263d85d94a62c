// Translation unit that owns the shared precompiled header (common/pch.h).
