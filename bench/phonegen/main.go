// Command phonegen streams GPS points like many phones at once: each phone opens one
// runtrack.v1.TrackingService/RecordTrack stream through Envoy, sends one point per interval on a
// fixed schedule for a number of seconds, then closes the stream and reads the answer.
//
// The message types come from the project's descriptor set (generated/runtrack_descriptor.pb) at run
// time and are built with dynamicpb: no generated Go code, so a change to the protos needs no change
// here as long as the fields it sets keep their names.
//
// One goroutine per phone; the phones share --connections HTTP/2 connections round-robin. Start times
// fall on a 10 ms grid (--tick), so that the phones due at the same moment go out in one write per
// connection instead of one write each (half the CPU per point at 1000 phones). The lag of a message
// is the time its SendMsg returned minus the time it was due; the schedule never drifts, a late
// message is sent at once. A failed stream is counted with its status and never retried. The result is
// one JSON document (--out) and the run ids of every phone (--run-ids); a progress line goes to stderr
// every 5 s.
//
// `phonegen watch` (watch.go) adds spectators: the same phones, then live links and WatchRun streams
// following their runs (scripts/bench watch).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/bits"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	// Well-known types, for descriptor sets that leave out their imports.
	_ "google.golang.org/protobuf/types/known/durationpb"
	_ "google.golang.org/protobuf/types/known/timestamppb"
)

// version names the build in the cache (~/.cache/runtrack/bin/phonegen-<version>): change it with
// any change to this module.
const version = "1.1.0"

const (
	method             = "/runtrack.v1.TrackingService/RecordTrack"
	requestType        = "runtrack.v1.RecordTrackRequest"
	responseType       = "runtrack.v1.RecordTrackResponse"
	progressEvery      = 5 * time.Second
	maxFailureKinds    = 20
	maxFailuresPrinted = 10
	metresPerDegree    = 111_320.0
	startLatitude      = 48.85
	startLongitude     = 2.35
	startSpreadDeg     = 0.02
	minSpeedMps        = 2.5
	maxSpeedMps        = 4.5
	accuracyMetres     = 5.0
	connectTimeout     = 10 * time.Second
	stdoutResultName   = "-"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

type config struct {
	address     string
	tokenFile   string
	descriptors string
	phones      int
	seconds     float64
	interval    time.Duration
	ramp        time.Duration
	tick        time.Duration
	connections int
	out         string
	runIDs      string
	seed        uint64
	seeded      bool
}

func usage(fs *flag.FlagSet, msg string) int {
	fmt.Fprintf(os.Stderr, "phonegen: %s\n", msg)
	fs.Usage()
	return 2
}

const descriptorSet = "generated/runtrack_descriptor.pb"

// findDescriptors is the project's descriptor set in the working directory or the nearest parent that
// has one (the repository root, from anywhere inside it).
func findDescriptors() string {
	dir, err := os.Getwd()
	if err != nil {
		return descriptorSet
	}
	for {
		p := filepath.Join(dir, descriptorSet)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return descriptorSet
		}
		dir = parent
	}
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "watch" {
		return runWatch(args[1:])
	}
	fs := flag.NewFlagSet("phonegen", flag.ContinueOnError)
	var c config
	fs.StringVar(&c.address, "address", "127.0.0.1:8080", "Envoy's gRPC address (h2c, plaintext)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file with one JWT per line; phone i uses line i mod n (required)")
	fs.StringVar(&c.descriptors, "descriptors", "",
		"the project's FileDescriptorSet (default: "+descriptorSet+" here or in the nearest parent directory)")
	fs.IntVar(&c.phones, "phones", 0, "number of phones, one RecordTrack stream each (required)")
	fs.Float64Var(&c.seconds, "seconds", 10, "how long each phone streams before it closes its stream")
	fs.DurationVar(&c.interval, "interval", time.Second, "one message (one point) per interval per phone")
	fs.DurationVar(&c.ramp, "ramp", 5*time.Second, "phones start spread evenly over this time")
	fs.DurationVar(&c.tick, "tick", 10*time.Millisecond,
		"start times are rounded down to this grid, so that phones due together share a write (0: exact)")
	fs.IntVar(&c.connections, "connections", 0, "HTTP/2 connections shared round-robin (default max(1, phones/500))")
	fs.StringVar(&c.out, "out", stdoutResultName, "where to write the JSON result (- for stdout)")
	fs.StringVar(&c.runIDs, "run-ids", "", "write every phone's run_id here, one per line")
	seed := fs.String("seed", "", "seed for run ids, start points and headings (default: random)")
	cpuProfile := fs.String("cpu-profile", "", "write a Go CPU profile of the run here (go tool pprof)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Println(version)
		return 0
	}
	if fs.NArg() > 0 {
		return usage(fs, "unexpected arguments: "+strings.Join(fs.Args(), " "))
	}
	if c.tokenFile == "" {
		return usage(fs, "--token-file is required")
	}
	if c.phones < 1 {
		return usage(fs, "--phones must be at least 1")
	}
	if !(c.seconds > 0) || math.IsInf(c.seconds, 0) {
		return usage(fs, "--seconds must be a positive number")
	}
	if c.interval <= 0 {
		return usage(fs, "--interval must be positive")
	}
	if c.ramp < 0 {
		return usage(fs, "--ramp must not be negative")
	}
	if c.tick < 0 {
		return usage(fs, "--tick must not be negative")
	}
	if c.connections < 0 {
		return usage(fs, "--connections must not be negative")
	}
	if c.connections == 0 {
		c.connections = max(1, c.phones/500)
	}
	c.connections = min(c.connections, c.phones)
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
	types, err := loadTypes(c.descriptors)
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
	result, err := generate(c, tokens, types)
	if err != nil {
		fmt.Fprintf(os.Stderr, "phonegen: %v\n", err)
		return 1
	}
	if err := writeResult(c, result); err != nil {
		fmt.Fprintf(os.Stderr, "phonegen: %v\n", err)
		return 1
	}
	return 0
}

func readTokens(path string) ([]metadata.MD, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--token-file: %w", err)
	}
	var mds []metadata.MD
	for line := range strings.SplitSeq(string(data), "\n") {
		tok := strings.TrimSpace(line)
		if tok == "" {
			continue
		}
		if !strings.HasPrefix(tok, "Bearer ") {
			tok = "Bearer " + tok
		}
		mds = append(mds, metadata.Pairs("authorization", tok))
	}
	if len(mds) == 0 {
		return nil, fmt.Errorf("--token-file %s holds no token", path)
	}
	return mds, nil
}

// messageTypes are the descriptors of what a phone sends and reads, and the fields it sets.
type messageTypes struct {
	request, point, timestamp, response protoreflect.MessageDescriptor

	reqRunID, reqPoints                              protoreflect.FieldDescriptor
	ptSeq, ptTime, ptLat, ptLon, ptAccuracy, ptSpeed protoreflect.FieldDescriptor
	tsSeconds, tsNanos                               protoreflect.FieldDescriptor
	respStored, respRejected, respRejections         protoreflect.FieldDescriptor
	rejectionReason                                  protoreflect.FieldDescriptor
}

// fallbackResolver finds a file or type in the descriptor set first, then among the files linked
// into this program (the well-known types), for sets built without --include_imports.
type fallbackResolver struct{ local *protoregistry.Files }

func (r fallbackResolver) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	if fd, err := r.local.FindFileByPath(path); err == nil {
		return fd, nil
	}
	return protoregistry.GlobalFiles.FindFileByPath(path)
}

func (r fallbackResolver) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	if d, err := r.local.FindDescriptorByName(name); err == nil {
		return d, nil
	}
	return protoregistry.GlobalFiles.FindDescriptorByName(name)
}

func loadTypes(path string) (*messageTypes, error) {
	resolver, err := loadFiles(path)
	if err != nil {
		return nil, err
	}
	return phoneTypes(resolver, path)
}

// loadFiles reads the descriptor set at path into a resolver that also knows the well-known types.
func loadFiles(path string) (fallbackResolver, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return fallbackResolver{}, fmt.Errorf("--descriptors: %w (run from the repository root or pass --descriptors)", err)
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(data, &set); err != nil {
		return fallbackResolver{}, fmt.Errorf("%s is not a FileDescriptorSet: %w", path, err)
	}
	files := new(protoregistry.Files)
	resolver := fallbackResolver{files}
	// protoc writes a file after its imports; a set out of that order is resolved in passes. An
	// import found nowhere (the set was built without --include_imports and the file is not linked
	// in) is left a placeholder, as a last resort: only the types a phone uses must be complete.
	pending := set.GetFile()
	lenient := false
	for len(pending) > 0 {
		var later []*descriptorpb.FileDescriptorProto
		var lastErr error
		for _, fdp := range pending {
			if _, err := files.FindFileByPath(fdp.GetName()); err == nil {
				continue
			}
			fd, err := (protodesc.FileOptions{AllowUnresolvable: lenient}).New(fdp, resolver)
			if err != nil {
				later, lastErr = append(later, fdp), err
				continue
			}
			if err := files.RegisterFile(fd); err != nil {
				return fallbackResolver{}, fmt.Errorf("%s: %w", fdp.GetName(), err)
			}
		}
		if len(later) == len(pending) {
			if lenient {
				return fallbackResolver{}, fmt.Errorf("%s: %w", path, lastErr)
			}
			lenient = true
		}
		pending = later
	}
	return resolver, nil
}

// phoneTypes are the descriptors a phone needs, from the set at path (named in errors).
func phoneTypes(resolver fallbackResolver, path string) (*messageTypes, error) {
	t := &messageTypes{}
	var missing error
	msg := func(name protoreflect.FullName) protoreflect.MessageDescriptor {
		d, e := resolver.FindDescriptorByName(name)
		if e != nil {
			if missing == nil {
				missing = fmt.Errorf("%s: no message %s", path, name)
			}
			return nil
		}
		md, ok := d.(protoreflect.MessageDescriptor)
		if !ok && missing == nil {
			missing = fmt.Errorf("%s: %s is not a message", path, name)
		}
		return md
	}
	field := func(md protoreflect.MessageDescriptor, name protoreflect.Name) protoreflect.FieldDescriptor {
		if md == nil {
			return nil
		}
		fd := md.Fields().ByName(name)
		if fd == nil && missing == nil {
			missing = fmt.Errorf("%s: %s has no field %s", path, md.FullName(), name)
		}
		return fd
	}
	t.request = msg(requestType)
	t.response = msg(responseType)
	t.reqRunID, t.reqPoints = field(t.request, "run_id"), field(t.request, "points")
	t.respStored, t.respRejected = field(t.response, "points_stored"), field(t.response, "points_rejected")
	t.respRejections = field(t.response, "rejections")
	if missing != nil {
		return nil, missing
	}
	// The nested types as the fields name them, so that dynamicpb finds each field in its message.
	t.point = t.reqPoints.Message()
	t.ptSeq, t.ptTime = field(t.point, "seq"), field(t.point, "time")
	t.ptLat, t.ptLon = field(t.point, "latitude"), field(t.point, "longitude")
	t.ptAccuracy, t.ptSpeed = field(t.point, "horizontal_accuracy_m"), field(t.point, "speed_mps")
	t.rejectionReason = field(t.respRejections.Message(), "reason")
	if missing != nil {
		return nil, missing
	}
	t.timestamp = t.ptTime.Message()
	if t.timestamp == nil || t.timestamp.IsPlaceholder() || t.timestamp.FullName() != "google.protobuf.Timestamp" {
		return nil, fmt.Errorf("%s: TrackPoint.time is not a google.protobuf.Timestamp", path)
	}
	t.tsSeconds, t.tsNanos = field(t.timestamp, "seconds"), field(t.timestamp, "nanos")
	if missing != nil {
		return nil, missing
	}
	return t, nil
}

// histogram counts latencies in microseconds, log-linear (64 sub-buckets per power of two, so a
// quantile is within 1.6 %), safe for concurrent use without locks.
type histogram struct {
	counts [histBuckets]atomic.Uint64
	total  atomic.Uint64
	max    atomic.Uint64
}

const (
	histSubBits = 6
	histLinear  = 2 << histSubBits // values below this have a bucket each
	histBuckets = histLinear + (64-histSubBits-1)*(1<<histSubBits)
)

func bucketOf(v uint64) int {
	if v < histLinear {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1
	top := v >> shift // in [64, 128)
	return histLinear + (shift-1)<<histSubBits + int(top) - (1 << histSubBits)
}

// bucketHigh is the largest value of a bucket.
func bucketHigh(i int) uint64 {
	if i < histLinear {
		return uint64(i)
	}
	i -= histLinear
	shift := i>>histSubBits + 1
	top := uint64(i&(1<<histSubBits-1)) + 1<<histSubBits
	return (top+1)<<shift - 1
}

func (h *histogram) record(us uint64) {
	h.counts[bucketOf(us)].Add(1)
	h.total.Add(1)
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			return
		}
	}
}

// quantileMs is the q-quantile in milliseconds (the high edge of its bucket, at most the maximum).
func (h *histogram) quantileMs(q float64) float64 {
	n := h.total.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = max(rank, 1)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			return round3(float64(min(bucketHigh(i), h.max.Load())) / 1000)
		}
	}
	return round3(float64(h.max.Load()) / 1000)
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

type stats struct {
	open, ok, failed, sent, acked, rejected atomic.Int64
	lag                                     histogram
	window                                  atomic.Pointer[histogram]

	mu         sync.Mutex
	failures   map[string]int64
	rejections map[string]int64
}

func (s *stats) recordLag(us uint64) {
	s.lag.record(us)
	s.window.Load().record(us)
}

// fail counts a failed stream; the first few are also printed to stderr with their run_id and seq,
// to be found in the replicas' logs.
func (s *stats) fail(runID string, seq int, err error) {
	st := status.Convert(err)
	key := codeName(st.Code()) + ": " + st.Message()
	if n := s.failed.Add(1); n <= maxFailuresPrinted {
		fmt.Fprintf(os.Stderr, "phonegen: %s run_id=%s after seq %d: %s\n",
			time.Now().UTC().Format("15:04:05.000"), runID, seq, key)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, seen := s.failures[key]; !seen && len(s.failures) >= maxFailureKinds {
		key = codeName(st.Code()) + ": (other messages)"
	}
	s.failures[key]++
}

func (s *stats) reject(reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, seen := s.rejections[reason]; !seen && len(s.rejections) >= maxFailureKinds {
		reason = "(other reasons)"
	}
	s.rejections[reason]++
}

// codeNames are the canonical names of the status codes (UNAVAILABLE, DEADLINE_EXCEEDED...).
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL",
	codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

func codeName(c codes.Code) string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return fmt.Sprintf("CODE_%d", uint32(c))
}

// phone is what one phone needs: its run, token, connection, start and path.
type phone struct {
	runID    string
	md       metadata.MD
	conn     *grpc.ClientConn
	start    time.Time
	lat, lon float64 // degrees at seq 1
	dLat     float64 // degrees per message
	dLon     float64
	speed    float64 // metres per second

	// Watch mode: the stream ends when ended is closed instead of at start + seconds, and the
	// phone keeps when it sent each point (the point's time). Nil and false in phones mode.
	ended      <-chan struct{}
	keepFixes  bool
	fixes      []int64 // unix µs of point seq k at index k-1 (the value of its time field)
	lastSeq    int     // the last seq sent, once stream has returned
	answered   bool    // the stream ended with the server's answer (every point stored or rejected)
	stored     uint64  // points_stored of that answer
	startedAt  time.Time
	finishedAt time.Time
}

func newRunID(rng *rand.Rand) string {
	var b [16]byte
	for i := 0; i < 16; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	const hex = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, x := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hex[x>>4], hex[x&0x0f])
	}
	return string(out)
}

var recordTrackDesc = &grpc.StreamDesc{StreamName: "RecordTrack", ClientStreams: true}

// stream runs one phone: one RecordTrack stream, one message per interval on the schedule
// start + (k-1)*interval for message k, closed at start + seconds (or, in watch mode, once ended is
// closed). It returns nothing: what happened goes into s (and, in watch mode, into p).
func (p *phone) stream(ctx context.Context, t *messageTypes, c config, s *stats) {
	timer := time.NewTimer(time.Until(p.start))
	defer timer.Stop()
	const (
		due = iota
		stopped
		ended
	)
	wait := func(at time.Time) int {
		d := time.Until(at)
		if d <= 0 {
			return due
		}
		timer.Reset(d)
		select {
		case <-timer.C:
			return due
		case <-ctx.Done():
			return stopped
		case <-p.ended: // nil in phones mode: never
			return ended
		}
	}
	if wait(p.start) != due {
		return // stopped before this phone started: not counted
	}
	sctx, cancel := context.WithCancel(metadata.NewOutgoingContext(ctx, p.md))
	defer cancel()
	st, err := p.conn.NewStream(sctx, recordTrackDesc, method)
	if err != nil {
		s.fail(p.runID, 0, err)
		return
	}
	p.startedAt = time.Now()
	s.open.Add(1)
	defer s.open.Add(-1)

	// One request, point and timestamp per phone, changed in place for every message: SendMsg has
	// encoded a message by the time it returns.
	req := dynamicpb.NewMessage(t.request)
	req.Set(t.reqRunID, protoreflect.ValueOfString(p.runID))
	points := req.Mutable(t.reqPoints).List()
	pv := points.NewElement()
	points.Append(pv)
	pt := pv.Message()
	ts := pt.Mutable(t.ptTime).Message()
	pt.Set(t.ptAccuracy, protoreflect.ValueOfFloat32(accuracyMetres))
	pt.Set(t.ptSpeed, protoreflect.ValueOfFloat32(float32(p.speed)))

	end := p.start.Add(time.Duration(c.seconds * float64(time.Second)))
	if p.ended != nil {
		end = p.start.Add(100 * 365 * 24 * time.Hour) // until ended is closed
	}
	sent := 0 // the seq of the last message sent
	defer func() { p.lastSeq = sent }()
	endedEarly := false
	for k := 1; ; k++ {
		at := p.start.Add(time.Duration(k-1) * c.interval)
		if !at.Before(end) {
			break
		}
		if w := wait(at); w == ended {
			endedEarly = true
			break
		} else if w == stopped {
			s.fail(p.runID, sent, status.FromContextError(ctx.Err()).Err())
			return
		}
		now := time.Now()
		step := float64(k - 1)
		pt.Set(t.ptSeq, protoreflect.ValueOfUint32(uint32(k)))
		pt.Set(t.ptLat, protoreflect.ValueOfFloat64(p.lat+step*p.dLat))
		pt.Set(t.ptLon, protoreflect.ValueOfFloat64(p.lon+step*p.dLon))
		ts.Set(t.tsSeconds, protoreflect.ValueOfInt64(now.Unix()))
		ts.Set(t.tsNanos, protoreflect.ValueOfInt32(int32(now.Nanosecond())))
		if k == 2 {
			req.Clear(t.reqRunID) // only the first message needs it
		}
		if p.keepFixes {
			p.fixes = append(p.fixes, now.UnixMicro())
		}
		if err := st.SendMsg(req); err != nil {
			if errors.Is(err, io.EOF) { // the server ended the stream: its status comes with RecvMsg
				err = st.RecvMsg(dynamicpb.NewMessage(t.response))
				if err == nil {
					err = status.Error(codes.Internal, "stream answered before the phone closed it")
				}
			}
			s.fail(p.runID, sent, err)
			return
		}
		lag := time.Since(at)
		sent = k
		s.sent.Add(1)
		s.recordLag(uint64(max(lag, 0) / time.Microsecond))
	}
	if !endedEarly {
		if w := wait(end); w == stopped {
			s.fail(p.runID, sent, status.FromContextError(ctx.Err()).Err())
			return
		}
	}
	if err := st.CloseSend(); err != nil {
		s.fail(p.runID, sent, err)
		return
	}
	resp := dynamicpb.NewMessage(t.response)
	if err := st.RecvMsg(resp); err != nil {
		s.fail(p.runID, sent, err)
		return
	}
	p.answered, p.finishedAt = true, time.Now()
	s.ok.Add(1)
	p.stored = resp.Get(t.respStored).Uint()
	s.acked.Add(int64(p.stored))
	if n := resp.Get(t.respRejected).Uint(); n > 0 {
		s.rejected.Add(int64(n))
		list := resp.Get(t.respRejections).List()
		for i := range list.Len() {
			s.reject(list.Get(i).Message().Get(t.rejectionReason).String())
		}
	}
}

type lagMs struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

type cpuS struct {
	User   float64 `json:"user"`
	System float64 `json:"system"`
}

type result struct {
	Version        string           `json:"version"`
	Phones         int              `json:"phones"`
	Seconds        float64          `json:"seconds"`
	IntervalS      float64          `json:"interval_s"`
	Connections    int              `json:"connections"`
	StreamsOK      int64            `json:"streams_ok"`
	StreamsFailed  int64            `json:"streams_failed"`
	Failures       map[string]int64 `json:"failures"`
	PointsSent     int64            `json:"points_sent"`
	PointsAcked    int64            `json:"points_acked"`
	PointsRejected int64            `json:"points_rejected"`
	Rejections     map[string]int64 `json:"rejections"`
	LagMs          lagMs            `json:"lag_ms"`
	CPUS           cpuS             `json:"cpu_s"`
	MaxRSSKiB      int64            `json:"max_rss_kib"`
	WallS          float64          `json:"wall_s"`
	runIDs         []string
}

func dial(address string) (*grpc.ClientConn, error) {
	return grpc.NewClient(
		"passthrough:///"+address,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// The phone does not retry, and so keeps no copy of what it sent for a retry.
		grpc.WithDisableRetry(),
		grpc.WithDefaultCallOptions(grpc.MaxRetryRPCBufferSize(0)),
		grpc.WithSharedWriteBuffer(true),
	)
}

func waitReady(ctx context.Context, conn *grpc.ClientConn) bool {
	conn.Connect()
	for {
		s := conn.GetState()
		if s == connectivity.Ready {
			return true
		}
		if !conn.WaitForStateChange(ctx, s) {
			return false
		}
	}
}

func generate(c config, tokens []metadata.MD, t *messageTypes) (*result, error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	began := time.Now()

	conns := make([]*grpc.ClientConn, c.connections)
	for i := range conns {
		conn, err := dial(c.address)
		if err != nil {
			return nil, fmt.Errorf("--address %s: %w", c.address, err)
		}
		// Not closed: the process exits right after, and the kernel's FIN ends the connection
		// cleanly, where grpc-go's closing GOAWAY counts as a protocol error in Envoy's stats.
		conns[i] = conn
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	for i, conn := range conns {
		if !waitReady(cctx, conn) {
			fmt.Fprintf(os.Stderr, "phonegen: connection %d to %s not ready after %s (%s); its phones will fail\n",
				i, c.address, connectTimeout, conn.GetState())
			break
		}
	}
	cancel()

	seed := c.seed
	if !c.seeded {
		seed = rand.Uint64()
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	t0 := time.Now().Add(50 * time.Millisecond)
	phones := make([]phone, c.phones)
	for i := range phones {
		heading := rng.Float64() * 2 * math.Pi
		speed := minSpeedMps + rng.Float64()*(maxSpeedMps-minSpeedMps)
		lat := startLatitude + (rng.Float64()-0.5)*startSpreadDeg
		lon := startLongitude + (rng.Float64()-0.5)*startSpreadDeg
		metres := speed * c.interval.Seconds()
		phones[i] = phone{
			runID: newRunID(rng),
			md:    tokens[i%len(tokens)],
			conn:  conns[i%len(conns)],
			start: t0.Add(offset(c, i)),
			lat:   lat,
			lon:   lon,
			dLat:  metres * math.Cos(heading) / metresPerDegree,
			dLon:  metres * math.Sin(heading) / (metresPerDegree * math.Cos(lat*math.Pi/180)),
			speed: speed,
		}
	}

	s := &stats{failures: map[string]int64{}, rejections: map[string]int64{}}
	s.window.Store(new(histogram))
	var wg sync.WaitGroup
	wg.Add(len(phones))
	for i := range phones {
		go func() {
			defer wg.Done()
			phones[i].stream(ctx, t, c, s)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
loop:
	for {
		select {
		case <-done:
			break loop
		case <-tick.C:
			w := s.window.Swap(new(histogram))
			fmt.Fprintf(os.Stderr, "phonegen: %5.0fs open=%d ok=%d failed=%d sent=%d lag_p99=%.1fms\n",
				time.Since(began).Seconds(), s.open.Load(), s.ok.Load(), s.failed.Load(), s.sent.Load(),
				w.quantileMs(0.99))
		}
	}
	wall := time.Since(began)

	r := &result{
		Version:        version,
		Phones:         c.phones,
		Seconds:        c.seconds,
		IntervalS:      c.interval.Seconds(),
		Connections:    c.connections,
		StreamsOK:      s.ok.Load(),
		StreamsFailed:  s.failed.Load(),
		Failures:       s.failures,
		PointsSent:     s.sent.Load(),
		PointsAcked:    s.acked.Load(),
		PointsRejected: s.rejected.Load(),
		Rejections:     s.rejections,
		LagMs:          lagMs{s.lag.quantileMs(0.5), s.lag.quantileMs(0.99), round3(float64(s.lag.max.Load()) / 1000)},
		WallS:          round3(wall.Seconds()),
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		r.CPUS = cpuS{round3(tvSeconds(ru.Utime)), round3(tvSeconds(ru.Stime))}
		r.MaxRSSKiB = int64(ru.Maxrss) // KiB on Linux
	}
	r.runIDs = make([]string, len(phones))
	for i := range phones {
		r.runIDs[i] = phones[i].runID
	}
	fmt.Fprintf(os.Stderr, "phonegen: done in %.1fs: %d ok, %d failed, %d points sent, %d acked, lag p99 %.1f ms, cpu %.2fs, %d goroutines left\n",
		r.WallS, r.StreamsOK, r.StreamsFailed, r.PointsSent, r.PointsAcked, r.LagMs.P99,
		r.CPUS.User+r.CPUS.System, runtime.NumGoroutine())
	return r, nil
}

// offset is when phone i starts after the first: spread evenly over the ramp, on the tick grid.
func offset(c config, i int) time.Duration {
	d := time.Duration(float64(c.ramp) * float64(i) / float64(c.phones))
	if c.tick > 0 {
		d -= d % c.tick
	}
	return d
}

func tvSeconds(tv syscall.Timeval) float64 {
	return float64(tv.Sec) + float64(tv.Usec)/1e6
}

func writeResult(c config, r *result) error {
	if c.runIDs != "" {
		var b strings.Builder
		for _, id := range r.runIDs {
			b.WriteString(id)
			b.WriteByte('\n')
		}
		if err := writeFile(c.runIDs, []byte(b.String())); err != nil {
			return err
		}
	}
	doc, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	doc = append(doc, '\n')
	if c.out == stdoutResultName {
		_, err = os.Stdout.Write(doc)
		return err
	}
	return writeFile(c.out, doc)
}

// writeFile replaces path atomically, so that a reader never sees half a file.
func writeFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}
