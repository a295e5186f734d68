package main

import (
	"math/rand/v2"
	"regexp"
	"testing"
	"time"
)

func TestEveryValueFallsInABucketThatHoldsIt(t *testing.T) {
	values := []uint64{0, 1, 127, 128, 129, 255, 256, 1000, 999_999, 1 << 40, 1<<64 - 1}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10_000 {
		values = append(values, rng.Uint64()>>rng.IntN(64))
	}
	for _, v := range values {
		i := bucketOf(v)
		if i < 0 || i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d, outside [0, %d)", v, i, histBuckets)
		}
		if v > bucketHigh(i) || (i > 0 && v <= bucketHigh(i-1)) {
			t.Fatalf("%d in bucket %d, which holds (%d, %d]", v, i, bucketHigh(i-1), bucketHigh(i))
		}
		if i >= histLinear && float64(bucketHigh(i)-bucketHigh(i-1)) > float64(v)/64+1 {
			t.Fatalf("bucket %d of %d is wider than 1/64 of it", i, v)
		}
	}
}

func TestQuantilesAreWithinTheBucketPrecision(t *testing.T) {
	var h histogram
	for us := uint64(1); us <= 100_000; us++ { // 1 µs .. 100 ms, evenly
		h.record(us)
	}
	for q, want := range map[float64]float64{0.5: 50, 0.99: 99} {
		if got := h.quantileMs(q); got < want || got > want*1.016 {
			t.Errorf("p%g = %g ms, want %g ms within 1.6 %%", q*100, got, want)
		}
	}
	if got := h.quantileMs(1); got != 100 {
		t.Errorf("max = %g ms, want 100", got)
	}
}

func TestRunIDsAreVersion4UUIDs(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	rng := rand.New(rand.NewPCG(3, 4))
	seen := map[string]bool{}
	for range 1000 {
		id := newRunID(rng)
		if !uuid.MatchString(id) || seen[id] {
			t.Fatalf("run id %q: not a fresh version 4 UUID", id)
		}
		seen[id] = true
	}
}

func TestStartsSpreadOverTheRampOnTheTickGrid(t *testing.T) {
	c := config{phones: 1000, ramp: 5 * time.Second, tick: 10 * time.Millisecond}
	if offset(c, 0) != 0 || offset(c, 999) != 4990*time.Millisecond || offset(c, 501) != 2500*time.Millisecond {
		t.Fatalf("offsets %v %v %v", offset(c, 0), offset(c, 501), offset(c, 999))
	}
	c.tick = 0
	if offset(c, 501) != 2505*time.Millisecond {
		t.Fatalf("offset without a grid %v", offset(c, 501))
	}
}
