package main

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/prometheus/common/model"
)

// durationValue is a flag.Value for a duration that also takes days and
// weeks ("7d", "2w", "36h", "1h30m"), as Prometheus writes them; "0"
// is zero.
type durationValue struct{ d time.Duration }

func (v *durationValue) Set(s string) error {
	if s == "0" {
		v.d = 0
		return nil
	}
	d, err := model.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a number and a unit (ms, s, m, h, d, w, y) such as 7d")
	}
	v.d = time.Duration(d)
	return nil
}

func (v *durationValue) String() string {
	if v == nil || v.d == 0 {
		return "0"
	}
	return model.Duration(v.d).String()
}

// bytesValue is a flag.Value for a size in bytes with an optional unit
// ("1GiB", "512MiB", "100MB", "4096").
type bytesValue struct{ n int64 }

func (v *bytesValue) Set(s string) error {
	n, err := humanize.ParseBytes(s)
	if err != nil || n > math.MaxInt64 {
		return fmt.Errorf("want a size in bytes with an optional unit such as 1GiB or 512MiB")
	}
	v.n = int64(n)
	return nil
}

func (v *bytesValue) String() string {
	switch {
	case v == nil:
		return "0"
	case v.n > 0 && v.n%(1<<30) == 0:
		return strconv.FormatInt(v.n>>30, 10) + "GiB"
	case v.n > 0 && v.n%(1<<20) == 0:
		return strconv.FormatInt(v.n>>20, 10) + "MiB"
	}
	return strconv.FormatInt(v.n, 10)
}
