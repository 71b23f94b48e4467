package oneroster.contract;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.function.Function;
import oneroster.cdc.AcademicSessionChange;
import oneroster.cdc.ClassChange;
import oneroster.cdc.CourseChange;
import oneroster.cdc.DemographicsChange;
import oneroster.cdc.Enrollment;
import oneroster.cdc.EnrollmentChange;
import oneroster.cdc.Op;
import oneroster.cdc.OrgChange;
import oneroster.cdc.UserChange;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.SchemaStore;
import org.apache.avro.specific.SpecificData;
import org.apache.avro.specific.SpecificRecordBase;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * A Java consumer of a real sync's topics, as a JVM team would write one.
 *
 * <p>Usage: {@code ContractCheck <bootstrap> <prefix> [<legacy prefix>]}. Reads {@code <prefix>.schemas} into a
 * {@link SchemaStore}, then every value of every event topic and of the state, checkpoints and
 * dead-letter topics with {@code isolation.level=read_committed}, and decodes each one twice:
 * with the generic API and with the classes avro-maven-plugin generated from {@code schemas/}.
 * Prints one line per event ({@code EVENT <topic> <event_id> <op>}) and per topic ({@code COUNT
 * <topic> <values> <tombstones>}); any disagreement between the two decodings, a missing header
 * or a fingerprint key that is not the wire's bytes exits 1. With a legacy prefix, its event
 * topics (values written with schema 0.1.0) are decoded the same way, into the 0.2.0 classes.
 */
public final class ContractCheck {
  private ContractCheck() {}

  // README-BEGIN
  static Properties consumerProperties(String bootstrap) {
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed"); // never an aborted batch
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    return props;
  }

  /** Every writer schema of {@code <prefix>.schemas}: the store the decoders resolve from. */
  static SchemaStore.Cache schemaStore(KafkaConsumer<String, byte[]> consumer, String prefix) {
    SchemaStore.Cache store = new SchemaStore.Cache();
    for (ConsumerRecord<String, byte[]> r : readAll(consumer, prefix + ".schemas")) {
      Schema writer = new Schema.Parser().parse(new String(r.value(), StandardCharsets.UTF_8));
      // The key is the hex of the 8 fingerprint bytes exactly as they follow C3 01 in a value:
      // CRC-64-AVRO of the parsing canonical form, little-endian.
      long fingerprint = SchemaNormalization.parsingFingerprint64(writer);
      check(r.key().equals(littleEndianHex(fingerprint)), "fingerprint key " + r.key());
      store.addSchema(writer);
    }
    return store;
  }

  static String littleEndianHex(long fingerprint) {
    return HexFormat.of().formatHex(
        java.nio.ByteBuffer.allocate(8)
            .order(java.nio.ByteOrder.LITTLE_ENDIAN).putLong(fingerprint).array());
  }

  /**
   * Decodes one value both ways. The reader schema is the one avro-maven-plugin compiled into
   * the generated class from schemas/*.avsc ({@code UserChange.getClassSchema()}); the writer
   * schema is looked up in the store by the value's fingerprint and resolved into it.
   */
  static <T extends SpecificRecordBase> T decodeBothWays(
      byte[] value, Schema reader, Function<SchemaStore, BinaryMessageDecoder<T>> generated,
      SchemaStore store) throws java.io.IOException {
    BinaryMessageDecoder<GenericRecord> generic =
        new BinaryMessageDecoder<>(GenericData.get(), reader, store);
    GenericRecord asGeneric = generic.decode(value);
    T asSpecific = generated.apply(store).decode(value); // e.g. UserChange.createDecoder(store)
    for (Schema.Field f : reader.getFields()) {
      Object g = asGeneric.get(f.name());
      Object s = asSpecific.get(f.name());
      check(String.valueOf(g).equals(String.valueOf(normalised(s))),
          reader.getName() + "." + f.name() + ": generic " + g + " vs generated " + s);
    }
    return asSpecific;
  }
  // README-END

  /** The generated API turns timestamp-millis into Instant; the generic API leaves a long. */
  private static Object normalised(Object specific) {
    return specific instanceof java.time.Instant i ? i.toEpochMilli() : specific;
  }

  private record EventType<T extends SpecificRecordBase>(
      Schema reader, Function<SchemaStore, BinaryMessageDecoder<T>> decoder) {}

  private static final Map<String, EventType<?>> EVENTS = new LinkedHashMap<>();

  static {
    EVENTS.put("orgs", new EventType<>(OrgChange.getClassSchema(), OrgChange::createDecoder));
    EVENTS.put("academicSessions", new EventType<>(
        AcademicSessionChange.getClassSchema(), AcademicSessionChange::createDecoder));
    EVENTS.put("courses", new EventType<>(CourseChange.getClassSchema(), CourseChange::createDecoder));
    EVENTS.put("classes", new EventType<>(ClassChange.getClassSchema(), ClassChange::createDecoder));
    EVENTS.put("users", new EventType<>(UserChange.getClassSchema(), UserChange::createDecoder));
    EVENTS.put("enrollments", new EventType<>(
        EnrollmentChange.getClassSchema(), EnrollmentChange::createDecoder));
    EVENTS.put("demographics", new EventType<>(
        DemographicsChange.getClassSchema(), DemographicsChange::createDecoder));
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 2 || args.length > 3) {
      System.err.println("usage: ContractCheck <bootstrap> <prefix> [<prefix of 0.1.0 copies>]");
      System.exit(2);
    }
    String prefix = args[1];
    try (KafkaConsumer<String, byte[]> consumer =
        new KafkaConsumer<>(consumerProperties(args[0]))) {
      SchemaStore.Cache store = schemaStore(consumer, prefix);
      for (Map.Entry<String, EventType<?>> e : EVENTS.entrySet()) {
        events(consumer, store, prefix + "." + e.getKey(), e.getValue());
      }
      for (String topic : List.of(".state", ".checkpoints", ".deadletter")) {
        byHeader(consumer, store, prefix + topic);
      }
      if (args.length == 3) { // events written with schema 0.1.0: resolved through the aliases
        for (Map.Entry<String, EventType<?>> e : EVENTS.entrySet()) {
          events(consumer, store, args[2] + "." + e.getKey(), e.getValue());
        }
      }
    } catch (IllegalStateException e) {
      System.err.println("contract check failed: " + e.getMessage());
      System.exit(1);
    }
  }

  private static <T extends SpecificRecordBase> void events(
      KafkaConsumer<String, byte[]> consumer, SchemaStore store, String topic, EventType<T> type)
      throws java.io.IOException {
    int values = 0;
    int tombstones = 0;
    for (ConsumerRecord<String, byte[]> r : readAll(consumer, topic)) {
      if (r.value() == null) {
        tombstones++;
        check("TOMBSTONE".equals(header(r, "op")), topic + " " + r.key() + ": tombstone op");
        continue;
      }
      values++;
      T event = decodeBothWays(r.value(), type.reader(), type.decoder(), store);
      String named = header(r, "schema"); // the current full name, or a former one (an alias)
      check(type.reader().getFullName().equals(named) || type.reader().getAliases().contains(named),
          topic + ": schema header " + named);
      Op op = (Op) event.get("op");
      check(op.name().equals(header(r, "op")), topic + ": op header");
      if (event instanceof EnrollmentChange enrollment && enrollment.getAfter() != null) {
        Enrollment after = enrollment.getAfter(); // typed access, e.g. the renamed class field
        check(after.getSchoolClass() != null, "enrollment without schoolClass " + r.key());
      }
      System.out.println("EVENT " + topic + " " + event.get("event_id") + " " + op);
    }
    System.out.println("COUNT " + topic + " " + values + " " + tombstones);
  }

  /** Values whose type the {@code schema} header names: decoded into that generated class. */
  private static void byHeader(KafkaConsumer<String, byte[]> consumer, SchemaStore store,
      String topic) throws java.io.IOException, ClassNotFoundException {
    int values = 0;
    int tombstones = 0;
    for (ConsumerRecord<String, byte[]> r : readAll(consumer, topic)) {
      if (r.value() == null) {
        tombstones++;
        continue;
      }
      values++;
      check("application/avro; encoding=single-object".equals(header(r, "content-type")),
          topic + ": content-type");
      Class<?> generated = Class.forName(header(r, "schema"));
      Schema reader = SpecificData.get().getSchema(generated);
      decodeBothWays(r.value(), reader,
          s -> new BinaryMessageDecoder<SpecificRecordBase>(
              SpecificData.getForClass(generated), reader, s), store);
    }
    System.out.println("COUNT " + topic + " " + values + " " + tombstones);
  }

  /** Every committed record of {@code topic}, from the beginning to the end it has now. */
  static List<ConsumerRecord<String, byte[]>> readAll(
      KafkaConsumer<String, byte[]> consumer, String topic) {
    List<TopicPartition> parts = new ArrayList<>();
    consumer.partitionsFor(topic).forEach(p -> parts.add(new TopicPartition(topic, p.partition())));
    consumer.assign(parts);
    consumer.seekToBeginning(parts);
    Map<TopicPartition, Long> end = consumer.endOffsets(parts);
    List<ConsumerRecord<String, byte[]>> out = new ArrayList<>();
    long deadline = System.nanoTime() + Duration.ofSeconds(120).toNanos();
    while (parts.stream().anyMatch(p -> consumer.position(p) < end.get(p))) {
      check(System.nanoTime() < deadline, topic + ": not read to its end in 120 s");
      consumer.poll(Duration.ofMillis(200)).forEach(out::add);
    }
    return out;
  }

  private static String header(ConsumerRecord<String, byte[]> r, String name) {
    Header h = r.headers().lastHeader(name);
    return h == null ? null : new String(h.value(), StandardCharsets.UTF_8);
  }

  private static void check(boolean ok, String what) {
    if (!ok) {
      throw new IllegalStateException(what);
    }
  }
}
