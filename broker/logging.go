package broker

import (
	"context"
	"log/slog"
)

// mochiLog wraps the logger given to mochi: mochi logs whole packets
// (topic and payload, so keys and values) when it refuses one, and logs
// every QoS 1 ingest publish as "rejected" at debug because the hook takes
// the PUBACK over. Packets are replaced by their type and size, and the
// expected rejection is not logged.
type mochiLog struct{ h slog.Handler }

func newMochiLogger(l *slog.Logger) *slog.Logger {
	return slog.New(mochiLog{h: l.Handler()}).With("component", "mochi")
}

func (m mochiLog) Enabled(ctx context.Context, lvl slog.Level) bool { return m.h.Enabled(ctx, lvl) }

func (m mochiLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "publish packet rejected" {
		return nil
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "pk", "packet", "payload", "topic", "filter", "filters":
			out.AddAttrs(slog.String(a.Key, "[redacted]"))
		default:
			out.AddAttrs(a)
		}
		return true
	})
	return m.h.Handle(ctx, out)
}

func (m mochiLog) WithAttrs(as []slog.Attr) slog.Handler { return mochiLog{h: m.h.WithAttrs(as)} }
func (m mochiLog) WithGroup(name string) slog.Handler    { return mochiLog{h: m.h.WithGroup(name)} }
