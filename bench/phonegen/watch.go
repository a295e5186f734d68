// Watch mode (`phonegen watch`): live runs and spectators following them, from one process.
//
// Phones stream as in phones mode (one RecordTrack stream and one goroutine each, one point a
// second), but until told to end rather than for a fixed time. Once they all stream and a baseline
// window without watchers has passed, each run gets one live link (CreateLiveLink, as its owner),
// then the watchers open, --watch-ramp apart: each one TrackingService/WatchRun stream (after_seq 0)
// carrying its run's link token, as a spectator's browser would, read by one goroutine. After a
// steady window the phones close their streams; the generator waits for every watcher to hold every
// point its run sent, calls SummaryService/StopRun for each run (--stop-runs) and waits for the
// watchers to see STOPPED and their streams end.
//
// A watcher decodes RunEvent straight from the wire (protowire, field numbers taken from the
// descriptor set at start): no message is built per event. It keeps, per seq of its run, when the
// point arrived; the phone keeps when it sent it (the value of the point's time field). From both,
// at the end: fix-to-watcher latency of every point delivered live (taken after the watcher opened),
// the latency until every watcher of the run held a point, the points each watcher missed, and the
// duplicates.
//
// Phase markers go to stdout as JSON lines ({"phase": "steady_start", "unix_s": ..., counters}), for
// the caller to sample CPU and metrics at the same moments; the result is one JSON document (--out).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

const (
	trackingService = "runtrack.v1.TrackingService"
	summaryService  = "runtrack.v1.SummaryService"
	callTimeout     = 10 * time.Second
	callAttempts    = 8
)

type watchConfig struct {
	address         string
	tokenFile       string
	descriptors     string
	runs            int
	watchers        int
	interval        time.Duration
	ramp            time.Duration // phones start over this time
	settle          time.Duration // after each ramp, before a window opens
	baseline        time.Duration // the window with phones alone (0: none)
	watchRamp       time.Duration // watchers start over this time
	steady          time.Duration // the window with phones and watchers
	drain           time.Duration // the longest wait for watchers to catch up, then to end
	tick            time.Duration
	phoneConns      int
	watchConns      int
	callConcurrency int
	stopRuns        bool
	out             string
	runIDs          string
	seed            uint64
	seeded          bool
	markers         io.Writer // phase markers, one JSON line each (runWatch: stdout)
}

func runWatch(args []string) int {
	fs := flag.NewFlagSet("phonegen watch", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: phonegen watch --token-file F --runs N --watchers M [flags]\n\n"+
			"Live runs (one phone each) and watchers following them with WatchRun; phase markers on stdout.\n\n")
		fs.PrintDefaults()
	}
	c := watchConfig{markers: os.Stdout}
	fs.StringVar(&c.address, "address", "127.0.0.1:8080", "Envoy's gRPC address (h2c, plaintext)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file with one JWT per line; run i's owner uses line i mod n (required)")
	fs.StringVar(&c.descriptors, "descriptors", "",
		"the project's FileDescriptorSet (default: "+descriptorSet+" here or in the nearest parent directory)")
	fs.IntVar(&c.runs, "runs", 0, "live runs, one phone each (required)")
	fs.IntVar(&c.watchers, "watchers", 0, "watchers, spread evenly over the runs (default 10 per run)")
	fs.DurationVar(&c.interval, "interval", time.Second, "one point per interval per phone")
	fs.DurationVar(&c.ramp, "ramp", 4*time.Second, "phones start spread evenly over this time")
	fs.DurationVar(&c.settle, "settle", 5*time.Second, "after each ramp, before its window opens")
	fs.DurationVar(&c.baseline, "baseline", 20*time.Second, "the window with phones alone (0: none)")
	fs.DurationVar(&c.watchRamp, "watch-ramp", 10*time.Second, "watchers start spread evenly over this time")
	fs.DurationVar(&c.steady, "steady", 60*time.Second, "the window with phones and watchers")
	fs.DurationVar(&c.drain, "drain", 20*time.Second,
		"at the end, the longest wait for the watchers to hold every point, then for them to end")
	fs.DurationVar(&c.tick, "tick", 10*time.Millisecond, "start times are rounded down to this grid (0: exact)")
	fs.IntVar(&c.phoneConns, "phone-connections", 0, "HTTP/2 connections of the phones (default max(1, runs/500))")
	fs.IntVar(&c.watchConns, "watch-connections", 0,
		"HTTP/2 connections of the watchers (default watchers/1000, within 1..16)")
	fs.IntVar(&c.callConcurrency, "call-concurrency", 32, "CreateLiveLink and StopRun calls in flight")
	fs.BoolVar(&c.stopRuns, "stop-runs", true, "end with StopRun per run and wait for the watchers to see STOPPED")
	fs.StringVar(&c.out, "out", stdoutResultName, "where to write the JSON result (- for stdout, after the markers)")
	fs.StringVar(&c.runIDs, "run-ids", "", "write every run_id here, one per line")
	seed := fs.String("seed", "", "seed for run ids, start points and headings (default: random)")
	cpuProfile := fs.String("cpu-profile", "", "write a Go CPU profile of the run here (go tool pprof)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		return usage(fs, "unexpected arguments: "+strings.Join(fs.Args(), " "))
	}
	if c.tokenFile == "" {
		return usage(fs, "--token-file is required")
	}
	if c.runs < 1 {
		return usage(fs, "--runs must be at least 1")
	}
	if c.watchers == 0 {
		c.watchers = 10 * c.runs
	}
	if c.watchers < 0 {
		return usage(fs, "--watchers must not be negative")
	}
	for name, d := range map[string]time.Duration{
		"--ramp": c.ramp, "--settle": c.settle, "--baseline": c.baseline, "--watch-ramp": c.watchRamp,
		"--drain": c.drain, "--tick": c.tick,
	} {
		if d < 0 {
			return usage(fs, name+" must not be negative")
		}
	}
	if c.interval <= 0 || c.steady <= 0 {
		return usage(fs, "--interval and --steady must be positive")
	}
	if c.phoneConns < 0 || c.watchConns < 0 || c.callConcurrency < 1 {
		return usage(fs, "connections must not be negative, --call-concurrency at least 1")
	}
	if c.phoneConns == 0 {
		c.phoneConns = max(1, c.runs/500)
	}
	c.phoneConns = min(c.phoneConns, c.runs)
	if c.watchConns == 0 {
		c.watchConns = min(16, max(1, c.watchers/1000))
	}
	c.watchConns = max(1, min(c.watchConns, c.watchers))
	if *seed != "" {
		if _, err := fmt.Sscan(*seed, &c.seed); err != nil {
			return usage(fs, "--seed must be an unsigned integer")
		}
		c.seeded = true
	}
	tokens, err := readTokens(c.tokenFile)
	if err != nil {
		return usage(fs, err.Error())
	}
	if c.descriptors == "" {
		c.descriptors = findDescriptors()
	}
	resolver, err := loadFiles(c.descriptors)
	if err != nil {
		return usage(fs, err.Error())
	}
	pt, err := phoneTypes(resolver, c.descriptors)
	if err != nil {
		return usage(fs, err.Error())
	}
	wt, err := loadWatchTypes(resolver, c.descriptors, c.stopRuns)
	if err != nil {
		return usage(fs, err.Error())
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return usage(fs, err.Error())
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return usage(fs, err.Error())
		}
		defer pprof.StopCPUProfile()
	}
	r, err := watch(c, tokens, pt, wt)
	if err != nil {
		fmt.Fprintf(os.Stderr, "phonegen watch: %v\n", err)
		return 1
	}
	if c.runIDs != "" {
		if err := writeFile(c.runIDs, []byte(strings.Join(r.runIDs, "\n")+"\n")); err != nil {
			fmt.Fprintf(os.Stderr, "phonegen watch: %v\n", err)
			return 1
		}
	}
	doc, err := json.MarshalIndent(r, "", "  ")
	if err == nil {
		doc = append(doc, '\n')
		if c.out == stdoutResultName {
			_, err = os.Stdout.Write(doc)
		} else {
			err = writeFile(c.out, doc)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "phonegen watch: %v\n", err)
		return 1
	}
	return 0
}

// ---- message types --------------------------------------------------------------------------------

// watchTypes are what watch mode sends (dynamic messages) and the wire numbers of what it reads.
type watchTypes struct {
	watchReq             protoreflect.MessageDescriptor
	wrRunID, wrAfterSeq  protoreflect.FieldDescriptor
	evPoints, evState    protowire.Number // RunEvent
	tpPoints             protowire.Number // TrackPoints
	ptSeq, ptTime        protowire.Number // TrackPoint
	tsSeconds, tsNanos   protowire.Number // Timestamp
	scState              protowire.Number // RunStateChange
	stateNames           map[int32]string
	stopped, deleted     int32
	linkReq, link        protoreflect.MessageDescriptor
	lrRunID, linkToken   protoreflect.FieldDescriptor
	stopReq, stopResp    protoreflect.MessageDescriptor
	srRunID, srOverview  protoreflect.FieldDescriptor
	ovStart, ovEnd       protoreflect.FieldDescriptor
	ovDistance, ovMoving protoreflect.FieldDescriptor
	ovPointCount         protoreflect.FieldDescriptor
}

func loadWatchTypes(resolver fallbackResolver, path string, stopRuns bool) (*watchTypes, error) {
	var missing error
	note := func(format string, args ...any) {
		if missing == nil {
			missing = fmt.Errorf("%s: "+format+" (regenerate it with scripts/gen-protos)", append([]any{path}, args...)...)
		}
	}
	method := func(service, name protoreflect.FullName, name2 protoreflect.Name) protoreflect.MethodDescriptor {
		d, err := resolver.FindDescriptorByName(service)
		if err != nil {
			note("no service %s", service)
			return nil
		}
		sd, ok := d.(protoreflect.ServiceDescriptor)
		if !ok {
			note("%s is not a service", service)
			return nil
		}
		md := sd.Methods().ByName(name2)
		if md == nil {
			note("%s has no method %s", name, name2)
		}
		return md
	}
	field := func(md protoreflect.MessageDescriptor, name protoreflect.Name) protoreflect.FieldDescriptor {
		if md == nil {
			return nil
		}
		fd := md.Fields().ByName(name)
		if fd == nil {
			note("%s has no field %s", md.FullName(), name)
		}
		return fd
	}
	num := func(fd protoreflect.FieldDescriptor) protowire.Number {
		if fd == nil {
			return 0
		}
		return fd.Number()
	}
	msgOf := func(fd protoreflect.FieldDescriptor) protoreflect.MessageDescriptor {
		if fd == nil {
			return nil
		}
		if fd.Message() == nil {
			note("%s is not a message field", fd.FullName())
		}
		return fd.Message()
	}
	t := &watchTypes{}
	w := method(trackingService, trackingService, "WatchRun")
	l := method(trackingService, trackingService, "CreateLiveLink")
	if missing != nil {
		return nil, missing
	}
	if !w.IsStreamingServer() || w.IsStreamingClient() {
		return nil, fmt.Errorf("%s: WatchRun is not a server-streaming method", path)
	}
	t.watchReq = w.Input()
	t.wrRunID, t.wrAfterSeq = field(t.watchReq, "run_id"), field(t.watchReq, "after_seq")
	event := w.Output()
	points, state := field(event, "points"), field(event, "state")
	t.evPoints, t.evState = num(points), num(state)
	list := field(msgOf(points), "points")
	t.tpPoints = num(list)
	point := msgOf(list)
	seq, ptTime := field(point, "seq"), field(point, "time")
	t.ptSeq, t.ptTime = num(seq), num(ptTime)
	ts := msgOf(ptTime)
	t.tsSeconds, t.tsNanos = num(field(ts, "seconds")), num(field(ts, "nanos"))
	stateField := field(msgOf(state), "state")
	t.scState = num(stateField)
	t.linkReq, t.link = l.Input(), l.Output()
	t.lrRunID, t.linkToken = field(t.linkReq, "run_id"), field(t.link, "token")
	if missing != nil {
		return nil, missing
	}
	if stateField.Enum() == nil {
		return nil, fmt.Errorf("%s: RunStateChange.state is not an enum", path)
	}
	t.stateNames = map[int32]string{}
	t.stopped, t.deleted = -1, -1
	values := stateField.Enum().Values()
	for i := range values.Len() {
		v := values.Get(i)
		t.stateNames[int32(v.Number())] = string(v.Name())
		switch v.Name() {
		case "STOPPED":
			t.stopped = int32(v.Number())
		case "DELETED":
			t.deleted = int32(v.Number())
		}
	}
	if stopRuns {
		s := method(summaryService, summaryService, "StopRun")
		if missing != nil {
			return nil, missing
		}
		t.stopReq, t.stopResp = s.Input(), s.Output()
		t.srRunID, t.srOverview = field(t.stopReq, "run_id"), field(t.stopReq, "overview")
		ov := msgOf(t.srOverview)
		t.ovStart, t.ovEnd = field(ov, "start_time"), field(ov, "end_time")
		t.ovDistance, t.ovMoving = field(ov, "distance_m"), field(ov, "moving_time")
		t.ovPointCount = field(ov, "point_count")
		if missing != nil {
			return nil, missing
		}
	}
	return t, nil
}

// runEvent is one RunEvent as a watcher needs it, decoded in place (its slices reused).
type runEvent struct {
	kind   int // eventNone, eventPoints or eventState
	seqs   []uint32
	timeUs []int64 // each point's time field, unix µs (0: absent)
	state  int32
}

const (
	eventNone = iota
	eventPoints
	eventState
)

var errBadEvent = errors.New("malformed RunEvent")

func (t *watchTypes) decode(b []byte, ev *runEvent) error {
	ev.kind, ev.seqs, ev.timeUs, ev.state = eventNone, ev.seqs[:0], ev.timeUs[:0], 0
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errBadEvent
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == t.evPoints || num == t.evState) {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return errBadEvent
			}
			b = b[m:]
			var err error
			if num == t.evPoints {
				ev.kind = eventPoints
				err = t.decodePoints(v, ev)
			} else {
				ev.kind = eventState
				err = t.decodeState(v, ev)
			}
			if err != nil {
				return err
			}
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return errBadEvent
		}
		b = b[n:]
	}
	return nil
}

func (t *watchTypes) decodePoints(b []byte, ev *runEvent) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errBadEvent
		}
		b = b[n:]
		if num == t.tpPoints && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return errBadEvent
			}
			b = b[m:]
			seq, us, err := t.decodePoint(v)
			if err != nil {
				return err
			}
			ev.seqs, ev.timeUs = append(ev.seqs, seq), append(ev.timeUs, us)
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return errBadEvent
		}
		b = b[n:]
	}
	return nil
}

func (t *watchTypes) decodePoint(b []byte) (seq uint32, timeUs int64, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, errBadEvent
		}
		b = b[n:]
		switch {
		case num == t.ptSeq && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, 0, errBadEvent
			}
			seq, n = uint32(v), m
		case num == t.ptTime && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return 0, 0, errBadEvent
			}
			if timeUs, err = t.decodeTimestamp(v); err != nil {
				return 0, 0, err
			}
			n = m
		default:
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return 0, 0, errBadEvent
			}
		}
		b = b[n:]
	}
	return seq, timeUs, nil
}

func (t *watchTypes) decodeTimestamp(b []byte) (int64, error) {
	var seconds, nanos int64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, errBadEvent
		}
		b = b[n:]
		if typ == protowire.VarintType && (num == t.tsSeconds || num == t.tsNanos) {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return 0, errBadEvent
			}
			if num == t.tsSeconds {
				seconds = int64(v)
			} else {
				nanos = int64(int32(v))
			}
			b = b[m:]
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return 0, errBadEvent
		}
		b = b[n:]
	}
	return seconds*1_000_000 + nanos/1000, nil
}

func (t *watchTypes) decodeState(b []byte, ev *runEvent) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errBadEvent
		}
		b = b[n:]
		if num == t.scState && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return errBadEvent
			}
			ev.state, b = int32(v), b[m:]
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return errBadEvent
		}
		b = b[n:]
	}
	return nil
}

// watchCodec encodes the WatchRunRequest (a dynamic message) as protobuf and decodes each RunEvent
// into a *runEvent without building a message. Its name keeps the usual content type.
type watchCodec struct{ t *watchTypes }

func (watchCodec) Name() string { return "proto" }

func (watchCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("watchCodec: cannot encode %T", v)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (c watchCodec) Unmarshal(data mem.BufferSlice, v any) error {
	ev, ok := v.(*runEvent)
	if !ok {
		return fmt.Errorf("watchCodec: cannot decode into %T", v)
	}
	if len(data) == 1 {
		return c.t.decode(data[0].ReadOnlyData(), ev)
	}
	return c.t.decode(data.Materialize(), ev)
}

// ---- watchers --------------------------------------------------------------------------------------

// How a watcher's stream ended.
const (
	outcomeNotStarted = iota // no link for its run, or the generator stopped first
	outcomeOpenFailed        // the stream could not be opened or its request sent
	outcomeFailed            // a status other than OK, not one the generator caused
	outcomeEndedEarly        // OK, but before STOPPED or DELETED
	outcomeEnded             // OK, after STOPPED or DELETED
	outcomeCancelled         // still open when the generator ended it
	outcomeCount
)

var outcomeNames = [outcomeCount]string{"not_started", "open_failed", "failed", "ended_early", "ended", "cancelled"}

type watcher struct {
	run   int
	conn  *grpc.ClientConn
	md    metadata.MD
	start time.Time

	// Written by the watcher's goroutine; read by others once it is done (contig: at any time).
	openedUs     int64   // unix µs when the stream was opened (0: never)
	firstEventUs int64   // µs from opening to the first event (-1: none)
	recv         []int64 // unix µs when seq k arrived, at index k-1 (0: not held)
	contig       atomic.Int64
	duplicates   int64
	unexpected   int64 // seq 0
	events       int64
	states       map[int32]int64
	firstState   bool // the first event was a state (as the API promises)
	sawEnd       bool // STOPPED or DELETED arrived
	outcome      int
	done         atomic.Bool
}

type watchStats struct {
	open, delivered, duplicates atomic.Int64
	failed                      atomic.Int64
	window                      atomic.Pointer[histogram] // fix to watcher, for the progress line

	mu       sync.Mutex
	failures map[string]int64
}

func (s *watchStats) fail(what string, err error) {
	st := status.Convert(err)
	s.failKey(what+": "+codeName(st.Code())+": "+st.Message(), what+": "+codeName(st.Code())+": (other messages)")
}

// failKey counts a watcher that failed or ended early, under key (other: once there are many kinds).
func (s *watchStats) failKey(key, other string) {
	if n := s.failed.Add(1); n <= maxFailuresPrinted {
		fmt.Fprintf(os.Stderr, "phonegen watch: %s %s\n", time.Now().UTC().Format("15:04:05.000"), key)
	}
	countKind(&s.mu, s.failures, key, other)
}

func countKind(mu *sync.Mutex, kinds map[string]int64, key, other string) {
	mu.Lock()
	defer mu.Unlock()
	if _, seen := kinds[key]; !seen && len(kinds) >= maxFailureKinds {
		key = other
	}
	kinds[key]++
}

var watchRunDesc = &grpc.StreamDesc{StreamName: "WatchRun", ServerStreams: true}

// follow runs one watcher until its stream ends or ctx is cancelled (then: outcomeCancelled).
func (w *watcher) follow(ctx context.Context, t *watchTypes, runID string, expect int, s *watchStats) {
	defer w.done.Store(true)
	w.firstEventUs = -1
	w.recv = make([]int64, 0, expect)
	timer := time.NewTimer(time.Until(w.start))
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
		return
	}
	sctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, w.md))
	defer cancel()
	opened := time.Now()
	w.openedUs = opened.UnixMicro()
	codec := watchCodec{t}
	st, err := w.conn.NewStream(sctx, watchRunDesc, "/"+trackingService+"/WatchRun", grpc.ForceCodecV2(codec))
	if err == nil {
		req := dynamicpb.NewMessage(t.watchReq)
		req.Set(t.wrRunID, protoreflect.ValueOfString(runID))
		if err = st.SendMsg(req); err == nil {
			err = st.CloseSend()
		}
		if errors.Is(err, io.EOF) { // the server answered already: its status comes with RecvMsg
			err = nil
		}
	}
	if err != nil {
		w.outcome = outcomeOpenFailed
		if ctx.Err() != nil {
			w.outcome = outcomeCancelled
			return
		}
		s.fail("open", err)
		return
	}
	s.open.Add(1)
	defer s.open.Add(-1)
	var ev runEvent
	for {
		err := st.RecvMsg(&ev)
		now := time.Now()
		if err != nil {
			switch {
			case errors.Is(err, io.EOF) && w.sawEnd:
				w.outcome = outcomeEnded
			case errors.Is(err, io.EOF):
				w.outcome = outcomeEndedEarly
				s.failKey("ended: OK before STOPPED or DELETED", "ended: OK before STOPPED or DELETED")
			case ctx.Err() != nil:
				w.outcome = outcomeCancelled
			default:
				w.outcome = outcomeFailed
				s.fail("watch", err)
			}
			return
		}
		nowUs := now.UnixMicro()
		if w.events == 0 {
			w.firstEventUs = nowUs - w.openedUs
			w.firstState = ev.kind == eventState
		}
		w.events++
		switch ev.kind {
		case eventState:
			if w.states == nil {
				w.states = map[int32]int64{}
			}
			w.states[ev.state]++
			if ev.state == t.stopped || ev.state == t.deleted {
				w.sawEnd = true
			}
		case eventPoints:
			w.hold(&ev, nowUs, s)
		}
	}
}

// hold records the points of one event.
func (w *watcher) hold(ev *runEvent, nowUs int64, s *watchStats) {
	fresh, dups := int64(0), int64(0)
	h := s.window.Load()
	for i, seq := range ev.seqs {
		if seq == 0 {
			w.unexpected++
			continue
		}
		k := int(seq) - 1
		if k >= len(w.recv) {
			if k >= cap(w.recv) {
				grown := make([]int64, k+1, max(k+1, 2*cap(w.recv)))
				copy(grown, w.recv)
				w.recv = grown
			} else {
				w.recv = w.recv[:k+1]
			}
		}
		if w.recv[k] != 0 {
			dups++
			continue
		}
		w.recv[k] = nowUs
		fresh++
		if at := ev.timeUs[i]; at >= w.openedUs {
			h.record(uint64(max(nowUs-at, 0)))
		}
	}
	c := w.contig.Load()
	for c < int64(len(w.recv)) && w.recv[c] != 0 {
		c++
	}
	w.contig.Store(c)
	w.duplicates += dups
	if fresh > 0 {
		s.delivered.Add(fresh)
	}
	if dups > 0 {
		s.duplicates.Add(dups)
	}
}

// ---- owner calls: live links and StopRun -----------------------------------------------------------

type callStats struct {
	ok, failed atomic.Int64
	latency    histogram
	mu         sync.Mutex
	failures   map[string]int64
}

func (s *callStats) fail(what string, err error) {
	st := status.Convert(err)
	key := codeName(st.Code()) + ": " + st.Message()
	if n := s.failed.Add(1); n <= maxFailuresPrinted {
		fmt.Fprintf(os.Stderr, "phonegen watch: %s %s\n", what, key)
	}
	countKind(&s.mu, s.failures, key, codeName(st.Code())+": (other messages)")
}

// retryable are the answers a call is tried again after: the run not there yet (its first
// message still on its way to the store), or a replica busy or going.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.NotFound, codes.FailedPrecondition, codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// invoke calls a unary method, up to callAttempts times for a retryable answer (200 ms apart).
func invoke(ctx context.Context, conn *grpc.ClientConn, md metadata.MD, method string, req, resp proto.Message,
	s *callStats,
) error {
	var err error
	for attempt := range callAttempts {
		if attempt > 0 {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
				return err
			}
		}
		cctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, md), callTimeout)
		began := time.Now()
		err = conn.Invoke(cctx, method, req, resp)
		cancel()
		if err == nil {
			s.latency.record(uint64(time.Since(began) / time.Microsecond))
			s.ok.Add(1)
			return nil
		}
		if !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	return err
}

// parallel runs f(i) for i in [0, n) on k goroutines.
func parallel(n, k int, f func(i int)) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range min(n, k) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

func tsMessage(md protoreflect.MessageDescriptor, at time.Time) protoreflect.Message {
	m := dynamicpb.NewMessage(md)
	m.Set(md.Fields().ByName("seconds"), protoreflect.ValueOfInt64(at.Unix()))
	m.Set(md.Fields().ByName("nanos"), protoreflect.ValueOfInt32(int32(at.Nanosecond())))
	return m
}

func durationMessage(md protoreflect.MessageDescriptor, d time.Duration) protoreflect.Message {
	m := dynamicpb.NewMessage(md)
	m.Set(md.Fields().ByName("seconds"), protoreflect.ValueOfInt64(int64(d/time.Second)))
	m.Set(md.Fields().ByName("nanos"), protoreflect.ValueOfInt32(int32(d%time.Second)))
	return m
}

// stopRequest is what the phone sends at STOP RUN, from what it sent.
func (t *watchTypes) stopRequest(p *phone, interval time.Duration) proto.Message {
	req := dynamicpb.NewMessage(t.stopReq)
	req.Set(t.srRunID, protoreflect.ValueOfString(p.runID))
	ov := req.Mutable(t.srOverview).Message()
	start, end := p.startedAt, p.finishedAt
	ov.Set(t.ovStart, protoreflect.ValueOfMessage(tsMessage(t.ovStart.Message(), start)))
	ov.Set(t.ovEnd, protoreflect.ValueOfMessage(tsMessage(t.ovEnd.Message(), end)))
	moving := end.Sub(start).Truncate(time.Second)
	ov.Set(t.ovMoving, protoreflect.ValueOfMessage(durationMessage(t.ovMoving.Message(), moving)))
	ov.Set(t.ovDistance, protoreflect.ValueOfFloat64(p.speed*interval.Seconds()*float64(max(p.lastSeq-1, 0))))
	ov.Set(t.ovPointCount, protoreflect.ValueOfUint32(uint32(p.lastSeq)))
	return req
}

// ---- the scenario ----------------------------------------------------------------------------------

type quantiles struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

func quantilesOf(h *histogram) quantiles {
	return quantiles{int64(h.total.Load()), h.quantileMs(0.5), h.quantileMs(0.99), round3(float64(h.max.Load()) / 1000)}
}

type phoneFigures struct {
	StreamsOK      int64            `json:"streams_ok"`
	StreamsFailed  int64            `json:"streams_failed"`
	Failures       map[string]int64 `json:"failures"`
	PointsSent     int64            `json:"points_sent"`
	PointsAcked    int64            `json:"points_acked"`
	PointsRejected int64            `json:"points_rejected"`
	Rejections     map[string]int64 `json:"rejections"`
	LagMs          lagMs            `json:"lag_ms"`
}

type callFigures struct {
	OK        int64            `json:"ok"`
	Failed    int64            `json:"failed"`
	Failures  map[string]int64 `json:"failures"`
	LatencyMs quantiles        `json:"latency_ms"`
}

func callFiguresOf(s *callStats) callFigures {
	return callFigures{s.ok.Load(), s.failed.Load(), s.failures, quantilesOf(&s.latency)}
}

type watcherFigures struct {
	Outcomes          map[string]int64 `json:"outcomes"`
	Failures          map[string]int64 `json:"failures"`
	SawStopped        int64            `json:"saw_end_state"` // STOPPED or DELETED
	FirstNotState     int64            `json:"first_event_not_state"`
	States            map[string]int64 `json:"state_events"`
	Events            int64            `json:"events"`
	FirstEventMs      quantiles        `json:"first_event_ms"`
	CaughtUpS         float64          `json:"caught_up_s"` // after the phones ended, until every watcher held every point
	AllCaughtUp       bool             `json:"all_caught_up"`
	ConnectionsPhones int              `json:"connections_phones"`
	ConnectionsWatch  int              `json:"connections_watchers"`
}

type watchResult struct {
	Version     string             `json:"version"`
	Runs        int                `json:"runs"`
	Watchers    int                `json:"watchers"`
	IntervalS   float64            `json:"interval_s"`
	Phases      map[string]float64 `json:"phases"` // unix seconds of each marker
	Phones      phoneFigures       `json:"phones"`
	Links       callFigures        `json:"links"`
	StopRun     *callFigures       `json:"stop_run"`
	WatcherFig  watcherFigures     `json:"watchers_detail"`
	Analysis    analysis           `json:"analysis"`
	CPUS        cpuS               `json:"cpu_s"`
	MaxRSSKiB   int64              `json:"max_rss_kib"`
	WallS       float64            `json:"wall_s"`
	Interrupted bool               `json:"interrupted"`
	runIDs      []string
}

// marker writes one phase marker (a JSON line) and keeps its time.
func (r *watchResult) marker(out io.Writer, name string, counters map[string]any) {
	now := time.Now()
	r.Phases[name] = float64(now.UnixMicro()) / 1e6
	line := map[string]any{"phase": name, "unix_s": r.Phases[name]}
	for k, v := range counters {
		line[k] = v
	}
	b, _ := json.Marshal(line)
	if _, err := out.Write(append(b, '\n')); err != nil {
		fmt.Fprintf(os.Stderr, "phonegen watch: phase marker: %v\n", err)
	}
	fmt.Fprintf(os.Stderr, "phonegen watch: phase %s\n", name)
}

// scenario is one run of watch mode: the phones, the watchers, and what they count.
type scenario struct {
	c        watchConfig
	pt       *messageTypes
	wt       *watchTypes
	ctx      context.Context // ends on SIGINT or SIGTERM
	phones   []phone
	watchers []watcher
	ps       *stats
	ws       *watchStats
	r        *watchResult
	phase    atomic.Pointer[string]
	expect   int // points a run is expected to reach (a capacity hint)

	steadyFrom, steadyTo int64 // the steady window, unix µs (0: not reached)
}

func watch(c watchConfig, tokens []metadata.MD, pt *messageTypes, wt *watchTypes) (*watchResult, error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()
	phoneConns, err := dialAll(ctx, c.address, c.phoneConns)
	if err != nil {
		return nil, err
	}
	var watchConns []*grpc.ClientConn
	if c.watchers > 0 {
		if watchConns, err = dialAll(ctx, c.address, c.watchConns); err != nil {
			return nil, err
		}
	}
	s := &scenario{
		c: c, pt: pt, wt: wt, ctx: ctx,
		ps: &stats{failures: map[string]int64{}, rejections: map[string]int64{}},
		ws: &watchStats{failures: map[string]int64{}},
		r: &watchResult{
			Version: version, Runs: c.runs, Watchers: c.watchers, IntervalS: c.interval.Seconds(),
			Phases: map[string]float64{},
		},
		expect: int((c.ramp+2*c.settle+c.baseline+c.watchRamp+c.steady+10*time.Second)/c.interval) + 16,
	}
	s.ps.window.Store(new(histogram))
	s.ws.window.Store(new(histogram))
	s.r.WatcherFig.ConnectionsPhones, s.r.WatcherFig.ConnectionsWatch = len(phoneConns), len(watchConns)
	initial := "phones_ramp"
	s.phase.Store(&initial)
	progressDone := make(chan struct{})
	go s.progress(began, progressDone)
	defer close(progressDone)

	// The phones, from t0 on.
	ended := make(chan struct{})
	t0 := time.Now().Add(50 * time.Millisecond)
	phoneCfg := s.makePhones(tokens, phoneConns, ended, t0)
	var phonesWG sync.WaitGroup
	phonesWG.Add(len(s.phones))
	for i := range s.phones {
		go func() {
			defer phonesWG.Done()
			s.phones[i].stream(ctx, pt, phoneCfg, s.ps)
		}()
	}
	s.enter("phones_ramp")

	// The windows: phones alone, then with watchers, who follow until cancelled (or their run ends).
	s.watchers = make([]watcher, c.watchers)
	var watchWG sync.WaitGroup
	wctx, cancelWatchers := context.WithCancel(ctx)
	defer cancelWatchers()
	linkStats := &callStats{failures: map[string]int64{}}
	s.timeline(wctx, t0, linkStats, watchConns, &watchWG)

	// The end: phones close their streams; every watcher should come to hold every point its run
	// sent; then each run is stopped, and its watchers should see STOPPED.
	s.enter("phones_end")
	close(ended)
	phonesWG.Wait()
	s.mark("phones_done")
	s.enter("catch_up")
	s.catchUp()
	s.mark("caught_up")
	var stopStats *callStats
	if c.stopRuns && ctx.Err() == nil {
		s.enter("stop_runs")
		stopStats = s.stopRuns()
		s.mark("stop_runs_done")
	}
	cancelWatchers()
	watchWG.Wait()
	s.mark("done")
	s.figures(linkStats, stopStats, time.Since(began))
	return s.r, nil
}

// dialAll opens n connections to address and waits (a while) for them to be ready.
func dialAll(ctx context.Context, address string, n int) ([]*grpc.ClientConn, error) {
	conns := make([]*grpc.ClientConn, n)
	for i := range conns {
		conn, err := dial(address)
		if err != nil {
			return nil, fmt.Errorf("--address %s: %w", address, err)
		}
		conns[i] = conn // not closed, as in phones mode
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	for i, conn := range conns {
		if !waitReady(cctx, conn) {
			fmt.Fprintf(os.Stderr, "phonegen watch: connection %d to %s not ready after %s (%s)\n",
				i, address, connectTimeout, conn.GetState())
			break
		}
	}
	return conns, nil
}

// makePhones lays out the phones as phones mode does, streaming until ended is closed.
func (s *scenario) makePhones(tokens []metadata.MD, conns []*grpc.ClientConn, ended chan struct{}, t0 time.Time) config {
	c := s.c
	seed := c.seed
	if !c.seeded {
		seed = rand.Uint64()
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	phoneCfg := config{interval: c.interval, ramp: c.ramp, tick: c.tick, phones: c.runs, seconds: 1}
	s.phones = make([]phone, c.runs)
	for i := range s.phones {
		heading := rng.Float64() * 2 * math.Pi
		speed := minSpeedMps + rng.Float64()*(maxSpeedMps-minSpeedMps)
		lat := startLatitude + (rng.Float64()-0.5)*startSpreadDeg
		lon := startLongitude + (rng.Float64()-0.5)*startSpreadDeg
		metres := speed * c.interval.Seconds()
		s.phones[i] = phone{
			runID:     newRunID(rng),
			md:        tokens[i%len(tokens)],
			conn:      conns[i%len(conns)],
			start:     t0.Add(offset(phoneCfg, i)),
			lat:       lat,
			lon:       lon,
			dLat:      metres * math.Cos(heading) / metresPerDegree,
			dLon:      metres * math.Sin(heading) / (metresPerDegree * math.Cos(lat*math.Pi/180)),
			speed:     speed,
			ended:     ended,
			keepFixes: true,
			fixes:     make([]int64, 0, s.expect),
		}
	}
	return phoneCfg
}

// mark writes a phase marker with the counters so far.
func (s *scenario) mark(name string) {
	s.r.marker(s.c.markers, name, map[string]any{
		"points_sent": s.ps.sent.Load(), "delivered": s.ws.delivered.Load(),
		"phones_open": s.ps.open.Load(), "watchers_open": s.ws.open.Load(),
	})
}

// enter marks the start of a phase that the progress line names.
func (s *scenario) enter(name string) {
	s.phase.Store(&name)
	s.mark(name)
}

func (s *scenario) sleepUntil(at time.Time) bool {
	t := time.NewTimer(time.Until(at))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// progress writes a line to stderr every 5 s until done is closed.
func (s *scenario) progress(began time.Time, done chan struct{}) {
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	lastDelivered := int64(0)
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			d := s.ws.delivered.Load()
			w := s.ws.window.Swap(new(histogram))
			lag := s.ps.window.Swap(new(histogram))
			fmt.Fprintf(os.Stderr, "phonegen watch: %5.0fs %-15s phones=%d failed=%d sent=%d lag_p99=%.0fms"+
				" watchers=%d failed=%d delivered=%d (%.0f/s) fix_to_watcher_p99=%.0fms\n",
				time.Since(began).Seconds(), *s.phase.Load(), s.ps.open.Load(), s.ps.failed.Load(), s.ps.sent.Load(),
				lag.quantileMs(0.99), s.ws.open.Load(), s.ws.failed.Load(), d,
				float64(d-lastDelivered)/progressEvery.Seconds(), w.quantileMs(0.99))
			lastDelivered = d
		}
	}
}

// timeline runs the windows: the phones' ramp, the baseline, the links, the watchers' ramp (each
// watcher follows under wctx) and the steady window. It returns early when the generator is stopped.
func (s *scenario) timeline(wctx context.Context, t0 time.Time, linkStats *callStats, conns []*grpc.ClientConn,
	wg *sync.WaitGroup,
) {
	c := s.c
	at := t0.Add(c.ramp + c.settle)
	if !s.sleepUntil(at) {
		return
	}
	if c.baseline > 0 {
		s.enter("baseline_start")
		if !s.sleepUntil(at.Add(c.baseline)) {
			return
		}
		s.mark("baseline_end")
	}
	s.enter("links")
	links := s.createLinks(linkStats)
	s.mark("links_done")
	if s.ctx.Err() != nil {
		return
	}
	if linkStats.ok.Load() == 0 && c.watchers > 0 {
		fmt.Fprintf(os.Stderr, "phonegen watch: no live link could be made: no watcher starts\n")
		return
	}
	s.enter("watchers_ramp")
	w0 := time.Now().Add(50 * time.Millisecond)
	watchCfg := config{ramp: c.watchRamp, tick: c.tick, phones: max(c.watchers, 1)}
	for j := range s.watchers {
		w := &s.watchers[j]
		w.run = j % c.runs
		w.conn = conns[j%len(conns)]
		w.md = links[w.run]
		w.start = w0.Add(offset(watchCfg, j))
		if w.md == nil {
			continue // no link: outcomeNotStarted
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.follow(wctx, s.wt, s.phones[w.run].runID, s.expect, s.ws)
		}()
	}
	at = w0.Add(c.watchRamp + c.settle)
	if !s.sleepUntil(at) {
		return
	}
	s.enter("steady_start")
	s.steadyFrom = time.Now().UnixMicro()
	defer func() { s.steadyTo = time.Now().UnixMicro() }() // an interrupted window ends here
	if !s.sleepUntil(at.Add(c.steady / 2)) {
		return
	}
	s.mark("steady_mid")
	if !s.sleepUntil(at.Add(c.steady)) {
		return
	}
	s.mark("steady_end")
}

// createLinks makes one live link per run, as its owner; a run without one is nil.
func (s *scenario) createLinks(linkStats *callStats) []metadata.MD {
	links := make([]metadata.MD, s.c.runs)
	parallel(s.c.runs, s.c.callConcurrency, func(i int) {
		p := &s.phones[i]
		req := dynamicpb.NewMessage(s.wt.linkReq)
		req.Set(s.wt.lrRunID, protoreflect.ValueOfString(p.runID))
		resp := dynamicpb.NewMessage(s.wt.link)
		err := invoke(s.ctx, p.conn, p.md, "/"+trackingService+"/CreateLiveLink", req, resp, linkStats)
		if err == nil {
			if tok := resp.Get(s.wt.linkToken).String(); tok != "" {
				links[i] = metadata.Pairs("authorization", "Bearer "+tok)
				return
			}
			linkStats.ok.Add(-1)
			err = status.Error(codes.Internal, "LiveLink without a token")
		}
		linkStats.fail("CreateLiveLink", err)
	})
	return links
}

// catchUp waits, at most --drain, for every open watcher of a run whose phone ended well to hold
// every point 1..last of it.
func (s *scenario) catchUp() {
	began := time.Now()
	deadline := began.Add(s.c.drain)
	caughtUp := false
	for s.ctx.Err() == nil {
		caughtUp = true
		for j := range s.watchers {
			w := &s.watchers[j]
			p := &s.phones[w.run]
			if w.md == nil || w.done.Load() || !p.answered {
				continue
			}
			if w.contig.Load() < int64(p.lastSeq) {
				caughtUp = false
				break
			}
		}
		if caughtUp || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.r.WatcherFig.CaughtUpS = round3(time.Since(began).Seconds())
	s.r.WatcherFig.AllCaughtUp = caughtUp
}

// stopRuns calls StopRun for every run whose phone ended well, then waits, at most --drain, for
// those runs' watchers to see STOPPED and their streams end.
func (s *scenario) stopRuns() *callStats {
	stopStats := &callStats{failures: map[string]int64{}}
	stopped := make([]bool, s.c.runs)
	parallel(s.c.runs, s.c.callConcurrency, func(i int) {
		p := &s.phones[i]
		if !p.answered {
			return
		}
		resp := dynamicpb.NewMessage(s.wt.stopResp)
		req := s.wt.stopRequest(p, s.c.interval)
		if err := invoke(s.ctx, p.conn, p.md, "/"+summaryService+"/StopRun", req, resp, stopStats); err != nil {
			stopStats.fail("StopRun", err)
			return
		}
		stopped[i] = true
	})
	deadline := time.Now().Add(s.c.drain)
	for s.ctx.Err() == nil && time.Now().Before(deadline) {
		open := false
		for j := range s.watchers {
			if w := &s.watchers[j]; w.md != nil && stopped[w.run] && !w.done.Load() {
				open = true
				break
			}
		}
		if !open {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return stopStats
}

// figures fills the result once every phone and watcher is done.
func (s *scenario) figures(linkStats, stopStats *callStats, wall time.Duration) {
	r, ps := s.r, s.ps
	r.Interrupted = s.ctx.Err() != nil
	r.Phones = phoneFigures{
		StreamsOK: ps.ok.Load(), StreamsFailed: ps.failed.Load(), Failures: ps.failures,
		PointsSent: ps.sent.Load(), PointsAcked: ps.acked.Load(), PointsRejected: ps.rejected.Load(),
		Rejections: ps.rejections,
		LagMs:      lagMs{ps.lag.quantileMs(0.5), ps.lag.quantileMs(0.99), round3(float64(ps.lag.max.Load()) / 1000)},
	}
	r.Links = callFiguresOf(linkStats)
	if stopStats != nil {
		f := callFiguresOf(stopStats)
		r.StopRun = &f
	}
	fig := &r.WatcherFig
	fig.Outcomes, fig.Failures, fig.States = map[string]int64{}, s.ws.failures, map[string]int64{}
	for _, name := range outcomeNames {
		fig.Outcomes[name] = 0
	}
	var first histogram
	for j := range s.watchers {
		w := &s.watchers[j]
		fig.Outcomes[outcomeNames[w.outcome]]++
		if w.sawEnd {
			fig.SawStopped++
		}
		if w.events > 0 {
			first.record(uint64(w.firstEventUs))
			if !w.firstState {
				fig.FirstNotState++
			}
		}
		fig.Events += w.events
		for state, n := range w.states {
			name, ok := s.wt.stateNames[state]
			if !ok {
				name = fmt.Sprintf("STATE_%d", state)
			}
			fig.States[name] += n
		}
	}
	fig.FirstEventMs = quantilesOf(&first)
	truth := make([]runTruth, len(s.phones))
	r.runIDs = make([]string, len(s.phones))
	for i := range s.phones {
		p := &s.phones[i]
		truth[i] = runTruth{fixes: p.fixes, last: p.lastSeq, complete: p.answered}
		r.runIDs[i] = p.runID
	}
	follows := make([]following, len(s.watchers))
	for j := range s.watchers {
		w := &s.watchers[j]
		follows[j] = following{run: w.run, openedUs: w.openedUs, recv: w.recv, duplicates: w.duplicates,
			unexpected: w.unexpected}
	}
	r.Analysis = analyse(truth, follows, s.steadyFrom, s.steadyTo)
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		r.CPUS = cpuS{round3(tvSeconds(ru.Utime)), round3(tvSeconds(ru.Stime))}
		r.MaxRSSKiB = int64(ru.Maxrss)
	}
	r.WallS = round3(wall.Seconds())
	a := r.Analysis
	fmt.Fprintf(os.Stderr, "phonegen watch: done in %.1fs: phones %d ok %d failed, %d points sent;"+
		" watchers %v; fix to watcher p99 %.0f ms (steady %.0f), to every watcher p99 %.0f ms (steady %.0f);"+
		" missed %d, duplicates %d; cpu %.2fs, %d goroutines left\n",
		r.WallS, r.Phones.StreamsOK, r.Phones.StreamsFailed, r.Phones.PointsSent, fig.Outcomes,
		a.FixToWatcherMs.P99, a.FixToWatcherSteadyMs.P99, a.FixToEveryWatcherMs.P99, a.FixToEveryWatcherSteadyMs.P99,
		a.Missed, a.Duplicates, r.CPUS.User+r.CPUS.System, runtime.NumGoroutine())
}

// ---- the analysis ----------------------------------------------------------------------------------

// runTruth is what a run's phone sent: the time of each point (unix µs, by seq-1) and the last seq;
// complete when its stream ended with the server's answer (every point sent was then stored).
type runTruth struct {
	fixes    []int64
	last     int
	complete bool
}

// following is what one watcher held of its run: when each seq arrived (unix µs, 0: never).
type following struct {
	run        int
	openedUs   int64 // 0: never opened
	recv       []int64
	duplicates int64
	unexpected int64
}

type analysis struct {
	// Every point delivered live (taken after its watcher opened): receive time minus the point's time.
	FixToWatcherMs       quantiles `json:"fix_to_watcher_ms"`
	FixToWatcherSteadyMs quantiles `json:"fix_to_watcher_steady_ms"` // points taken in the steady window
	// Per point, until the last of its run's watchers (open before it was taken) that held it had it.
	FixToEveryWatcherMs       quantiles `json:"fix_to_every_watcher_ms"`
	FixToEveryWatcherSteadyMs quantiles `json:"fix_to_every_watcher_steady_ms"`
	Delivered                 int64     `json:"delivered"`         // distinct (watcher, point) pairs
	DeliveredLive             int64     `json:"delivered_live"`    // of those, taken after the watcher opened
	DeliveredBacklog          int64     `json:"delivered_backlog"` // taken before: read back from the store
	Duplicates                int64     `json:"duplicates"`
	Unexpected                int64     `json:"unexpected"` // seq 0, or beyond the last seq the phone sent
	WatchersChecked           int       `json:"watchers_checked"`
	Expected                  int64     `json:"points_expected"` // sum over checked watchers of the run's last seq
	Missed                    int64     `json:"missed"`
	WatchersWithGaps          int       `json:"watchers_with_gaps"`
	RunsChecked               int       `json:"runs_checked"`
	RunsIncomplete            int       `json:"runs_incomplete"` // the phone's stream failed: not checked
	SteadyFromUnixS           float64   `json:"steady_from_unix_s"`
	SteadyToUnixS             float64   `json:"steady_to_unix_s"`
}

// analyse checks every watcher of a complete run for points 1..last and measures the latencies of
// points taken after the watcher opened; the steady figures keep points taken in [from, to) (unix µs).
func analyse(runs []runTruth, ws []following, from, to int64) analysis {
	var a analysis
	var all, steady, every, everySteady histogram
	a.SteadyFromUnixS, a.SteadyToUnixS = float64(from)/1e6, float64(to)/1e6
	byRun := make([][]int, len(runs))
	for j, w := range ws {
		if w.openedUs != 0 && w.run >= 0 && w.run < len(runs) {
			byRun[w.run] = append(byRun[w.run], j)
		}
	}
	inSteady := func(at int64) bool { return from != 0 && at >= from && at < to }
	for i, run := range runs {
		if !run.complete {
			a.RunsIncomplete++
		} else {
			a.RunsChecked++
		}
		last := min(run.last, len(run.fixes))
		for _, j := range byRun[i] {
			w := ws[j]
			a.Duplicates += w.duplicates
			a.Unexpected += w.unexpected
			for k, at := range w.recv {
				if at == 0 {
					continue
				}
				if k >= last {
					a.Unexpected++
					continue
				}
				a.Delivered++
				fix := run.fixes[k]
				if fix < w.openedUs {
					a.DeliveredBacklog++
					continue
				}
				a.DeliveredLive++
				d := uint64(max(at-fix, 0))
				all.record(d)
				if inSteady(fix) {
					steady.record(d)
				}
			}
			if run.complete {
				a.WatchersChecked++
				a.Expected += int64(last)
				missed := int64(0)
				for k := range last {
					if k >= len(w.recv) || w.recv[k] == 0 {
						missed++
					}
				}
				a.Missed += missed
				if missed > 0 {
					a.WatchersWithGaps++
				}
			}
		}
		for k := range last {
			fix := run.fixes[k]
			latest, held := int64(-1), false
			for _, j := range byRun[i] {
				w := ws[j]
				if w.openedUs > fix || k >= len(w.recv) || w.recv[k] == 0 {
					continue
				}
				held = true
				latest = max(latest, w.recv[k]-fix)
			}
			if held {
				d := uint64(max(latest, 0))
				every.record(d)
				if inSteady(fix) {
					everySteady.record(d)
				}
			}
		}
	}
	a.FixToWatcherMs, a.FixToWatcherSteadyMs = quantilesOf(&all), quantilesOf(&steady)
	a.FixToEveryWatcherMs, a.FixToEveryWatcherSteadyMs = quantilesOf(&every), quantilesOf(&everySteady)
	return a
}
